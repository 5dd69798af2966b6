"""Metrics, probes, refusal rows, retention and the usage dashboard, against the served gateway."""

import csv
import datetime as dt
import html
import io
import json
import logging
import re
import socket
from decimal import Decimal
from io import StringIO

import httpx
import openai
import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from proxy.models import ModelPrice, RequestLog
from proxy.server import lifecycle
from proxy.usage import logwriter
from tests.conftest import make_key, make_provider, request_logs, sdk, sdk_turn
from tests.helpers import scrape, value


def test_metrics_count_http_and_websocket_turns_and_refusals(gateway, upstream, api_key):
    make_provider(upstream, allowed_models=["gpt-5.5"])
    # The shipped list prices may be there already (a transactional test empties them).
    ModelPrice.objects.update_or_create(
        model="gpt-5.5", defaults={"input_per_million": Decimal(1), "output_per_million": Decimal(2)}
    )
    before = scrape(gateway)
    sdk(gateway, api_key).responses.create(model="gpt-5.5", input="hello")
    with sdk(gateway, api_key).responses.connect(max_retries=0) as conn:
        events = sdk_turn(conn, model="gpt-5.5", input="hello")
        assert events[-1].type == "response.completed"
        during = scrape(gateway)
    assert httpx.post(gateway.url + "/v1/responses", json={"model": "gpt-5.5"}).status_code == 401
    request_logs(3)
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    turn = {"provider": "alpha", "model": "gpt-5.5", "status": "200"}
    assert delta("sluice_turns_total", client_transport="http", upstream_transport="http", **turn) == 1
    assert (
        delta("sluice_turns_total", client_transport="websocket", upstream_transport="websocket", **turn) == 1
    )
    assert delta("sluice_refusals_total", code="invalid_api_key") == 1
    assert delta("sluice_time_to_first_event_seconds_count", provider="alpha") == 2
    assert delta("sluice_turn_duration_seconds_count", client_transport="websocket") == 1
    assert delta("sluice_tokens_total", kind="output", model="gpt-5.5") > 0
    assert delta("sluice_cost_usd_total", model="gpt-5.5") > 0
    # The sockets of the WebSocket turn were open during it and closed after it.
    assert (
        value(during, "sluice_client_websockets_open") - value(before, "sluice_client_websockets_open") == 1
    )
    assert (
        value(during, "sluice_upstream_websockets_open") - value(before, "sluice_upstream_websockets_open")
        == 1
    )
    assert value(after, "sluice_client_websockets_open") == value(before, "sluice_client_websockets_open")
    assert value(after, "sluice_request_log_queue") == 0


def test_refused_turns_count_under_the_model_they_named(gateway, upstream, admin_client):
    make_provider(upstream, allowed_models=["gpt-5.5"])
    _, raw = make_key(allowed_models=["gpt-5-mini"])
    before = scrape(gateway)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gateway, raw).responses.create(model="gpt-5.5", input="not for this key")
    auth = {"Authorization": f"Bearer {raw}"}
    assert httpx.post(gateway.url + "/v1/responses", content=b"{not json", headers=auth).status_code == 400
    request_logs(2)
    after = scrape(gateway)

    def delta(**labels: str) -> float:
        return value(after, "sluice_turns_total", **labels) - value(before, "sluice_turns_total", **labels)

    assert (delta(model="gpt-5.5", status="403"), delta(model="", status="400")) == (1, 1)
    # The dashboard's top models: the refused turn under its model; no row for a turn without one.
    url = reverse("admin:proxy_usage_changelist")
    usage = admin_client.get(url).context["usage"]
    assert [(m["name"], m["turns"]) for m in usage.models] == [("gpt-5.5", 1)]
    assert usage.totals["turns"] == 2
    assert admin_client.get(url, {"model": "gpt-5.5"}).context["usage"].totals["turns"] == 1


def test_metrics_ask_for_the_token_when_one_is_set(gateway, settings):
    settings.SLUICE_METRICS_TOKEN = "scrape-secret"
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    assert httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert scrape(gateway, "scrape-secret")


def test_breaker_state_is_a_gauge_per_provider(gateway, api_key):
    make_provider(None, name="dead", allowed_models=["gpt-5.5"], connect_timeout=1)
    for _ in range(3):  # SLUICE_BREAKER_THRESHOLD failures open it
        response = httpx.post(
            gateway.url + "/v1/responses",
            json={"model": "gpt-5.5", "input": "x"},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=20,
        )
        assert response.status_code == 502
        assert "dead" not in response.text, "the body names an internal provider"
    samples = scrape(gateway)
    assert value(samples, "sluice_breaker_open_until_seconds", provider="dead") > timezone.now().timestamp()


def test_healthz_answers_whatever_the_host(gateway):
    response = httpx.get(gateway.url + "/healthz", headers={"Host": "pod-10-1-2-3.internal"})
    assert response.status_code == 200 and response.text.strip() == "ok"
    admin = httpx.get(gateway.url + "/admin/login/", headers={"Host": "pod-10-1-2-3.internal"})
    assert admin.status_code == 400, "the admin still checks ALLOWED_HOSTS"


def test_readyz_checks_database_and_cache_and_says_draining(gateway):
    response = httpx.get(gateway.url + "/readyz", headers={"Host": "10.1.2.3:8000"})
    assert response.status_code == 200 and response.json() == {"status": "ok", "down": {}, "degraded": {}}
    lifecycle.begin_drain()
    try:
        response = httpx.get(gateway.url + "/readyz")
    finally:
        lifecycle._draining = False
    assert response.status_code == 503 and response.json()["down"] == {"lifecycle": "draining"}


def upgrade_refusal(gateway, **kwargs) -> int:
    try:
        with ws_connect(gateway.url.replace("http://", "ws://") + "/v1/responses", open_timeout=10, **kwargs):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_every_refusal_leaves_a_row(gateway, upstream, api_key):
    from settings_app.models import SystemSettings

    make_provider(upstream, allowed_models=["gpt-5.5"])
    auth = {"Authorization": f"Bearer {api_key}"}
    url = gateway.url + "/v1/responses"
    assert httpx.post(url, json={"model": "gpt-5.5"}).status_code == 401
    assert httpx.post(url, content=b"{not json", headers=auth).status_code == 400
    assert httpx.post(url, json={"input": "no model"}, headers=auth).status_code == 400
    assert httpx.post(url, json={"model": "nobody-serves-this"}, headers=auth).status_code == 404
    assert httpx.put(url, json={}, headers=auth).status_code == 405
    assert httpx.get(gateway.url + "/v1/nothing-here", headers=auth).status_code == 404
    big = b'{"model": "gpt-5.5", "input": "' + b"x" * 64 + b'"}'
    from django.conf import settings

    limit, settings.SLUICE_MAX_BODY_BYTES = settings.SLUICE_MAX_BODY_BYTES, 32
    try:
        assert httpx.post(url, content=big, headers=auth).status_code == 413
    finally:
        settings.SLUICE_MAX_BODY_BYTES = limit
    assert upgrade_refusal(gateway) == 401
    with ws_connect(url.replace("http://", "ws://"), additional_headers=auth, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "response.create", "input": "no model"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "error"
    SystemSettings.objects.update(client_websockets=False)
    from settings_app.runtime import invalidate_all

    invalidate_all()
    assert upgrade_refusal(gateway, additional_headers=auth) == 426
    rows = request_logs(10)
    got = sorted((r.status, r.error_code, r.client_transport, r.endpoint) for r in rows)
    assert got == sorted(
        [
            (401, "invalid_api_key", "http", "responses"),
            (400, "invalid_json", "http", "responses"),
            (400, "missing_required_parameter", "http", "responses"),
            (404, "model_not_found", "http", "responses"),
            (405, "method_not_allowed", "http", "responses"),
            (404, "not_found", "http", "unknown"),
            (413, "request_too_large", "http", "responses"),
            (401, "invalid_api_key", "websocket", "responses"),
            (400, "missing_required_parameter", "websocket", "responses"),
            (426, "websockets_disabled", "websocket", "responses"),
        ]
    )
    keyed = {r.error_code for r in rows if r.api_key_id is not None}
    assert keyed == {
        "invalid_json",
        "missing_required_parameter",
        "model_not_found",
        "method_not_allowed",
        "not_found",
        "request_too_large",  # its body is never read, but its key is in the headers
    }


def test_refusals_without_a_key_are_rate_limited_per_address(gateway):
    logwriter._anonymous.clear()
    before = scrape(gateway)
    with httpx.Client() as client:
        for _ in range(logwriter.ANONYMOUS_ROWS_PER_MINUTE + 15):
            assert client.get(gateway.url + "/v1/models").status_code == 401
    rows = request_logs(logwriter.ANONYMOUS_ROWS_PER_MINUTE + 15, timeout=2)
    assert len(rows) == logwriter.ANONYMOUS_ROWS_PER_MINUTE
    after = scrape(gateway)
    dropped = value(after, "sluice_request_log_dropped_total", reason="rate_limited") - value(
        before, "sluice_request_log_dropped_total", reason="rate_limited"
    )
    assert dropped == 15
    refused = value(after, "sluice_refusals_total", code="invalid_api_key") - value(
        before, "sluice_refusals_total", code="invalid_api_key"
    )
    assert refused == logwriter.ANONYMOUS_ROWS_PER_MINUTE + 15, "metrics count every refusal"
    logwriter._anonymous.clear()


def test_a_refusal_without_a_key_is_logged_and_allowed_rows_by_its_own_address(gateway, caplog):
    """The allowance of rows is per client address (not per connection: each refusal below comes on a
    connection of its own, from a port of its own), and the log line of a refusal names its method, path
    and address, or a socket's upgrade."""
    logwriter._anonymous.clear()
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with caplog.at_level(logging.INFO, logger="sluice.refusals"):
        for _ in range(logwriter.ANONYMOUS_ROWS_PER_MINUTE + 5):
            assert httpx.get(gateway.url + "/v1/models").status_code == 401
        assert other.post(gateway.url + "/v1/responses", json={"model": "gpt-5.5"}).status_code == 401
        upgrade = socket.create_connection(("127.0.0.1", gateway.port), source_address=("127.0.0.2", 0))
        with pytest.raises(InvalidStatus):
            ws_connect(gateway.url.replace("http", "ws", 1) + "/v1/responses", sock=upgrade)
    rows = request_logs(logwriter.ANONYMOUS_ROWS_PER_MINUTE + 2, timeout=2)
    assert len(rows) == logwriter.ANONYMOUS_ROWS_PER_MINUTE + 2, (
        "the other address has an allowance of its own"
    )
    assert [(r.endpoint, r.client_transport) for r in rows[-2:]] == [
        ("responses", "http"),
        ("responses", "websocket"),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "sluice.refusals"]
    assert lines[0].startswith("refused GET /v1/models from 127.0.0.1 (http, models): 401 "), lines[0]
    assert lines[-2].startswith("refused POST /v1/responses from 127.0.0.2 (http, responses): 401 "), lines[
        -2
    ]
    assert lines[-1].startswith(
        "refused WEBSOCKET /v1/responses from 127.0.0.2 (websocket, responses): 401 "
    ), lines[-1]
    other.close()
    logwriter._anonymous.clear()


@pytest.mark.django_db(transaction=True)
def test_prunelogs_deletes_old_rows_in_batches(settings):
    from proxy.management.commands.prunelogs import prune

    now = timezone.now()
    for days in (1, 10, 40, 100, 200):
        RequestLog.objects.create(created_at=now - dt.timedelta(days=days), requested_model=f"{days}d")
    out = StringIO()
    call_command("prunelogs", "--older-than", "30", stdout=out)
    assert "3" in out.getvalue()
    assert sorted(RequestLog.objects.values_list("requested_model", flat=True)) == ["10d", "1d"]
    settings.SLUICE_LOG_RETENTION_DAYS = 5
    call_command("prunelogs", stdout=StringIO())
    assert list(RequestLog.objects.values_list("requested_model", flat=True)) == ["1d"]
    for i in range(7):
        RequestLog.objects.create(created_at=now - dt.timedelta(days=50), requested_model=str(i))
    assert prune(30, batch=3) == 7 and RequestLog.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_retention_commands_delete_a_batch_per_transaction_oldest_first():
    from django.db import connection

    from proxy.usage.batches import delete_in_batches

    now = timezone.now()
    made = [
        RequestLog.objects.create(created_at=now - dt.timedelta(days=60 - i), requested_model=str(i)).pk
        for i in range(7)
    ]
    seen: list[tuple[list[int], bool]] = []

    def each(keys: list[int]) -> None:
        seen.append((keys, connection.in_atomic_block))

    rows = RequestLog.objects.filter(created_at__lt=now - dt.timedelta(days=30)).order_by("created_at")
    assert delete_in_batches(rows, batch=3, before_delete=each, pause=0) == 7
    assert seen == [(made[:3], True), (made[3:6], True), (made[6:], True)]
    assert not RequestLog.objects.exists()


def fill_usage() -> tuple:
    """Rows over three days: two keys, two providers, a fallback and refusals."""
    from proxy.models import RequestLog

    key_a, _ = make_key("alpha-team")
    key_b, _ = make_key("beta-team", username="bob")
    p1, p2 = make_provider(None, name="north"), make_provider(None, name="south")
    today = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    rows = []
    for day in range(3):
        for i in range(4):
            rows.append(
                RequestLog(
                    created_at=today - dt.timedelta(days=day),
                    api_key=key_a if i % 2 else key_b,
                    provider=p1 if i < 3 else p2,
                    upstream_model="gpt-5.5" if i < 3 else "gpt-5.5-mini",
                    input_tokens=1000,
                    cached_input_tokens=400,
                    output_tokens=200,
                    reasoning_tokens=50,
                    cost=Decimal("0.25") if i % 2 else Decimal("1.00"),
                    time_to_first_event_ms=100.0 * (i + 1),
                    client_transport="websocket" if i else "http",
                    upstream_transport="http" if i == 3 else ("websocket" if i else "http"),
                    fallback_reason="upgrade_refused" if i == 3 else "",
                )
            )
        rows.append(
            RequestLog(created_at=today - dt.timedelta(days=day), status=401, error_code="invalid_api_key")
        )
    RequestLog.objects.bulk_create(rows)
    call_command("rollup", "--days", "4", stdout=StringIO())  # rows not from the writer: summed on demand
    return key_a, key_b, p1, p2


def test_dashboard_aggregates_filters_and_csv(admin_client):
    key_a, key_b, p1, p2 = fill_usage()
    url = reverse("admin:proxy_usage_changelist")
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert url in index, "the dashboard is reachable from the admin index"
    response = admin_client.get(url)
    assert response.status_code == 200
    usage = response.context["usage"]
    assert usage.totals["turns"] == 15 and usage.totals["cost"] == Decimal("7.50")
    assert usage.totals["input"] == 12000 and usage.totals["cached"] == 4800
    assert [r["name"] for r in usage.keys][:2] == [str(key_b), str(key_a)]
    assert usage.providers[0]["name"] == "north" and usage.providers[0]["turns"] == 9
    assert usage.fallbacks[0]["fallback_reason"] == "upgrade_refused" and usage.fallbacks[0]["turns"] == 3
    assert usage.refusals[0]["error_code"] == "invalid_api_key" and round(usage.refusals[0]["share"]) == 20
    north = next(r for r in usage.ttfe if r["name"] == "north")
    # From the latency roll-up's 5 %-wide buckets: within 2.5 % of the turns' own 200 and 300 ms.
    assert north["p50"] == pytest.approx(200, rel=0.025) and north["p95"] == pytest.approx(300, rel=0.025)
    text = response.content.decode()
    assert text.count('class="sluice-chart"') == 3 and "<rect" in text

    filtered = admin_client.get(url, {"provider": p2.pk}).context["usage"]
    assert filtered.totals["turns"] == 3 and filtered.totals["cost"] == Decimal("0.75")
    one_day = admin_client.get(url, {"start": timezone.now().date().isoformat()}).context["usage"]
    assert one_day.totals["turns"] == 5

    aggregates = b"".join(admin_client.get(url, {"export": "aggregates"}).streaming_content).decode()
    table = list(csv.reader(io.StringIO(aggregates)))
    assert ["provider", "north", "6.75", "9"] in [row[:4] for row in table], table[-12:]
    requests = b"".join(admin_client.get(url, {"export": "rows"}).streaming_content).decode()
    assert len(list(csv.reader(io.StringIO(requests)))) == 16  # a header and 15 rows


@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        (Decimal("7.5"), "$7.50"),
        (Decimal("0.0014"), "$0.0014"),
        (Decimal("0.00143"), "$0.0014"),
        (Decimal("0.001"), "$0.001"),
        (Decimal("0.00003"), "$0.00003"),  # not zero, and not shown as zero
        (Decimal("1234.5"), "$1,234.50"),
    ],
)
def test_the_dashboard_shows_every_amount_in_one_format(admin_client, cost, shown):
    key, _ = make_key(monthly_budget=Decimal(5000))
    RequestLog.objects.create(api_key=key, upstream_model="gpt-5.5", cost=cost, input_tokens=10)
    page = admin_client.get(reverse("admin:proxy_usage_changelist")).content.decode()
    total = html.unescape(re.search(r'id="sluice-total-cost">([^<]*)<', page)[1])
    # The spend of the key, person, team, model and provider rows, and the key's spend today and this month
    # beside its monthly budget (and what is left of it).
    cells = [html.unescape(c) for c in re.findall(r'<td class="num">([^<]*\$[^<]*)</td>', page)]
    assert (total, cells[:8]) == (shown, [shown] * 7 + ["$5,000.00"])


def test_request_log_status_classes(admin_client):
    fill_usage()
    url = reverse("admin:proxy_requestlog_changelist")
    for status_class, rows in (("refused", 3), ("ok", 12), ("server", 0)):
        listed = admin_client.get(url, {"status_class": status_class}).context["cl"].result_count
        assert listed == rows, status_class


def test_a_refusal_is_logged_once(gateway, caplog):
    import logging

    caplog.set_level(logging.INFO)
    assert httpx.post(gateway.url + "/v1/responses", json={"model": "gpt-5.5"}).status_code == 401
    request_logs(1)
    lines = [
        r
        for r in caplog.records
        if not r.name.startswith("httpx") and ("401" in r.getMessage() or "Unauthorized" in r.getMessage())
    ]
    assert [r.name for r in lines] == ["sluice.refusals"], [(r.name, r.getMessage()) for r in lines]


def test_json_log_format_writes_one_object_per_line():
    import os
    import subprocess
    import sys

    from django.conf import settings

    env = {**os.environ, "SLUICE_LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    code = "import logging; logging.getLogger('sluice.test').warning('two\\nlines %s', 'here')"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    entry = json.loads(lines[0])
    assert entry["message"] == "two\nlines here" and entry["logger"] == "sluice.test"
    assert entry["level"] == "WARNING" and entry["time"].endswith("+00:00")
