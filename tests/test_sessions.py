"""Codex sessions: every row carries its session, refused HTTP turns too; the admin lists sessions."""

import httpx
import pytest

from tests.conftest import make_key, make_provider, request_logs

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_refused_http_turn_is_logged_with_its_session(gateway, upstream):
    make_provider(upstream)
    _key, raw = make_key(allowed_models=["gpt-5.5"])
    response = httpx.post(
        gateway.url + "/v1/responses",
        headers={"Authorization": f"Bearer {raw}", "session-id": "0199-codex-session"},
        json={"model": "not-allowed", "input": "hi"},
        timeout=10,
    )
    assert response.status_code in (403, 404), response.text
    (row,) = request_logs(1)
    assert row.status == response.status_code and row.session_id == "0199-codex-session"
