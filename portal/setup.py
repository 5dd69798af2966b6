"""The client set-up shown with a new key: Codex's config.toml, the export line, a Python snippet."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from providers.models import Provider

ENV_KEY = "SLUICE_API_KEY"
FALLBACK_MODEL = "gpt-5.5"


def base_url(request: HttpRequest) -> str:
    """The gateway's /v1 as users reach it: SLUICE_PUBLIC_URL, else the address of this request."""
    public = getattr(settings, "PUBLIC_URL", None)
    if public is not None and public.netloc:
        return f"{public.scheme}://{public.netloc}{public.path.rstrip('/')}/v1"
    return request.build_absolute_uri("/v1")


def model_for(key: Any) -> str:
    """A model the key may use: its own list's first, else its team's, else one a provider serves."""
    if key.allowed_models:
        return key.allowed_models[0]
    if key.team is not None and key.team.allowed_models:
        return key.team.allowed_models[0]
    for models in (
        Provider.objects.filter(enabled=True)
        .order_by("priority", "name")
        .values_list("allowed_models", flat=True)
    ):
        if models:
            return models[0]
    return FALLBACK_MODEL


def snippets(request: HttpRequest, key: Any, secret: str) -> dict[str, str]:
    url, model = base_url(request), model_for(key)
    config = "\n".join(
        [
            f"model = {json.dumps(model)}",
            'model_provider = "sluice"',
            "",
            "[model_providers.sluice]",
            'name = "Sluice"',
            f"base_url = {json.dumps(url)}",
            'wire_api = "responses"',
            f'env_key = "{ENV_KEY}"',
            "supports_websockets = true",
            "",
        ]
    )
    python = "\n".join(
        [
            "import openai",
            "",
            f'client = openai.OpenAI(base_url="{url}", api_key=os.environ["{ENV_KEY}"])',
            f'print(client.responses.create(model="{model}", input="hello").output_text)',
        ]
    )
    return {
        "config": config,
        "export": f"export {ENV_KEY}='{secret}'",
        "python": "import os\n" + python,
        "model": model,
        "base_url": url,
    }
