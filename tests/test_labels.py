"""Every error code the gateway raises itself has a human, translated label in the request log and the
dashboard (an upstream's own codes are shown as they came)."""

import re
from pathlib import Path

from django.conf import settings
from django.utils import translation

from proxy.common.labels import ERROR_LABELS, error_label

# A refusal's status and code as the gateway writes them: `WireError(429, "code", …` and the conditional
# `WireError(400, "a" if … else "b", …`.
RAISED = re.compile(r'(?:WireError|LimitError)\(\s*\d{3},\s*"([a-z_]+)"(?:\s*if [^"]+ else "([a-z_]+)")?')


def raised_codes() -> set[str]:
    root = Path(settings.BASE_DIR)
    return {
        code
        for package in ("proxy", "providers", "settings_app", "config")
        for path in (root / package).rglob("*.py")
        for match in RAISED.findall(path.read_text())
        for code in match
        if code
    }


def test_every_code_the_gateway_raises_has_a_label():
    codes = raised_codes()
    assert {"rate_limit_exceeded", "insufficient_quota", "model_not_allowed", "missing_event_type"} <= codes
    assert sorted(codes - set(ERROR_LABELS)) == []


def test_the_governance_labels_are_translated():
    for code in ("insufficient_quota", "model_not_allowed", "team_disabled"):
        with translation.override("en"):
            english = error_label(code)
        with translation.override("ja"):
            assert error_label(code) != english and error_label(code).endswith(f"({code})")
