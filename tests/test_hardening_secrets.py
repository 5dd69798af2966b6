"""Django's DEBUG error page, rendered from a real exception in the gateway's own frames, shows no key."""

import pytest
from django.test import AsyncRequestFactory
from django.views.debug import ExceptionReporter

from tests.conftest import make_key

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDER_KEY = "pk-live-0123456789abcdef-provider"


async def test_debug_page_hides_the_client_key_and_the_provider_key(settings):
    from asgiref.sync import sync_to_async

    from providers.registry import ProviderInfo
    from proxy.http.views import api_view
    from proxy.upstream.http import upstream_headers

    settings.DEBUG = True
    _, raw = await sync_to_async(make_key)()
    provider = ProviderInfo(
        id=1, name="p", base_url="http://127.0.0.1:1/v1", api_key=PROVIDER_KEY, priority=0, weight=1,
        allowed_models=frozenset(), model_redirects={}, extra_headers={}, connect_timeout=1,
        first_byte_timeout=1, idle_timeout=1, proxy_url="", websocket_mode="never",
    )  # fmt: skip

    @api_view(("POST",))
    async def broken(request, client, headers):
        outgoing = upstream_headers(provider, headers)  # noqa: F841 - a frame variable the page would show
        raise RuntimeError("a bug in a view")

    request = AsyncRequestFactory().post(
        "/v1/responses", b"{}", content_type="application/json", headers={"authorization": f"Bearer {raw}"}
    )
    with pytest.raises(RuntimeError) as raised:
        await broken(request)
    html = ExceptionReporter(request, raised.type, raised.value, raised.tb).get_traceback_html()
    assert "a bug in a view" in html and "outgoing" in html and "headers" in html
    assert raw not in html
    assert PROVIDER_KEY not in html
