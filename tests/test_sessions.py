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


@pytest.mark.django_db
def test_the_sessions_page_groups_turns_by_session_and_the_log_filters_by_owner_and_session(admin_client):
    from decimal import Decimal

    from django.urls import reverse

    from proxy.models import RequestLog

    key, _ = make_key("codex-laptop", username="dana")
    other, _ = make_key("ci", username="erin")
    for i, transport in enumerate(("websocket", "websocket", "http")):
        RequestLog.objects.create(
            api_key=key, owner=key.owner, session_id="sess-aaaa-1111-2222", client_transport=transport,
            input_tokens=1000, output_tokens=100, cost=Decimal("0.25"), status=200 if i < 2 else 429,
        )  # fmt: skip
    RequestLog.objects.create(api_key=other, owner=other.owner, session_id="sess-bbbb", input_tokens=5)
    page = admin_client.get(reverse("admin:proxy_requestlog_sessions")).content.decode()
    table = page.split('id="sluice-session-list"', 1)[1].split("</table>", 1)[0]
    first = table.split("<tr>")[2]  # the latest session first: sess-bbbb; then sess-aaaa
    assert "sess-bbbb" in first
    row = table.split("<tr>")[3]
    for shown in ("codex-laptop", ">3<", ">1<", "3,000", ">300<", "$0.75", "both"):
        assert shown in row, shown
    # The request log: the owner under each key, a session column linking to its turns, filters for both.
    changelist = reverse("admin:proxy_requestlog_changelist")
    listed = admin_client.get(changelist, {"session_id": "sess-aaaa-1111-2222"}).content.decode()
    assert listed.count("sluice-owner") == 3 and "dana" in listed and "sessions/" in listed
    by_owner = admin_client.get(changelist, {"owner__id__exact": other.owner.pk})
    assert by_owner.context["cl"].result_count == 1
