"""Alerts through Apprise to real receivers: an SMTP server (aiosmtpd) and an HTTP server of the test's own
for the JSON webhook and the Slack-format payload, sent from the gateway's own paths (turns, the breaker,
the admin, the expiry timer), once per threshold and period across processes, retried when a channel fails.

Apprise's slack:// only ever posts to Slack's own host, so the Slack-format payload is checked through
mmost:// (Mattermost's incoming webhooks take Slack's payload, and Apprise lets them name any host)."""

import datetime as dt
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from django.urls import reverse

from audit import alerts
from audit.models import AlertChannel, AlertDelivery, AlertSent, AuditEvent
from tests.conftest import free_port, make_key, make_provider
from tests.serveproc import ROOT, ServeProcess

SECRET_TOKEN = "hooktoken0123456789abcdef"


class Hook:
    """An HTTP server on 127.0.0.1 that keeps what is posted to it and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((self.path, json.loads(body or b"{}")))
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def wait(self, count: int, timeout: float = 15) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            received.append(envelope)
            return "250 OK"

    controller = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, received
    controller.stop()


@pytest.fixture(autouse=True)
def _quick_retries(settings: Any) -> Iterator[None]:
    settings.SLUICE_ALERT_ATTEMPTS = 3
    settings.SLUICE_ALERT_BACKOFF_SECONDS = 0.05
    yield
    alerts.flush(15)


def priced(model: str = "gpt-5.5") -> None:
    """A price that makes one small turn cost a few dollars."""
    from proxy.models import ModelPrice

    ModelPrice.objects.update_or_create(
        model=model, defaults={"input_per_million": Decimal(100000), "output_per_million": Decimal(100000)}
    )


def turn(gateway: Any, key: str) -> int:
    response = httpx.post(
        gateway.url + "/v1/responses",
        json={"model": "gpt-5.5", "input": "hello"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    )
    assert response.status_code in (200, 429), response.text
    return response.status_code


def settle() -> None:
    from proxy.usage import logwriter

    assert logwriter.flush(10) and alerts.flush(15)


def test_a_key_crossing_its_daily_budget_is_mailed_once(gateway, upstream, smtp, settings):
    port, mails = smtp
    settings.SLUICE_ALERT_URLS = f"mailto://127.0.0.1:{port}?from=gw@example.test&to=ops@example.test"
    make_provider(upstream)
    priced()
    key, raw = make_key(daily_budget=Decimal("1.00"))
    assert turn(gateway, raw) == 200
    settle()
    assert turn(gateway, raw) == 429  # spent: refused, and told only once
    settle()
    assert len(mails) == 1
    assert mails[0].rcpt_tos == ["ops@example.test"]
    message = message_from_bytes(mails[0].content)
    subject = str(make_header(decode_header(message["Subject"])))
    assert subject == f"Sluice: API key “{key.name}” reached 100% of its daily budget"
    assert set(AlertSent.objects.values_list("threshold", flat=True)) == {"daily:80", "daily:100"}
    (delivery,) = AlertDelivery.objects.all()
    assert (delivery.status, delivery.event, delivery.attempts) == ("sent", "budget", 1)


def test_a_team_policy_sets_its_thresholds(gateway, upstream, hook, settings):
    from audit.models import TeamAlertPolicy
    from proxy.models import Team

    settings.SLUICE_ALERT_URLS = hook.url()
    make_provider(upstream)
    priced()
    team = Team.objects.create(name="blue", monthly_budget=Decimal("100.00"))
    TeamAlertPolicy.objects.create(team=team, thresholds=[1, 50])  # a turn costs 1.80 USD here
    _key, raw = make_key(team=team)
    turn(gateway, raw)
    settle()
    ((path, body),) = hook.wait(1)
    assert path == "/hook" and body["title"] == "Sluice: team “blue” reached 1% of its monthly budget"
    assert list(AlertSent.objects.values_list("subject", "threshold")) == [(f"team:{team.pk}", "monthly:1")]


def test_channels_from_the_admin_post_json_and_slack_payloads_and_stay_masked(admin_client, hook):
    add = reverse("admin:audit_alertchannel_add")
    for name, url in (("web", hook.url()), ("chat", f"mmost://127.0.0.1:{hook.port}/{SECRET_TOKEN}")):
        response = admin_client.post(add, {"name": name, "url": url, "enabled": "on"})
        assert response.status_code == 302, response.context["adminform"].form.errors
    chat = AlertChannel.objects.get(name="chat")
    assert SECRET_TOKEN not in chat.url_encrypted and chat.url.endswith(SECRET_TOKEN)
    for page in (
        reverse("admin:audit_alertchannel_changelist"),
        reverse("admin:audit_alertchannel_change", args=[chat.pk]),
    ):
        assert SECRET_TOKEN not in admin_client.get(page).content.decode()
    changelist = reverse("admin:audit_alertchannel_changelist")
    ids = list(AlertChannel.objects.values_list("pk", flat=True))
    response = admin_client.post(changelist, {"action": "send_test", "_selected_action": ids}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    assert sorted(shown) == ["“chat”: test alert sent.", "“web”: test alert sent."]
    received = dict(hook.wait(2))
    assert received["/hook"]["title"] == "Sluice: test alert"
    assert received["/hook"]["message"] == "This channel receives Sluice's alerts."
    slack = received[f"/hooks/{SECRET_TOKEN}"]
    assert "Sluice: test alert" in slack["text"]  # Slack's incoming-webhook shape: a "text" field
    rows = AuditEvent.objects.filter(object_type="audit.AlertChannel", action="create")
    assert rows.count() == 2 and SECRET_TOKEN not in json.dumps(list(rows.values_list("changes", flat=True)))


@pytest.mark.parametrize(
    ("url", "reason"),
    [("nosuch://anything", "Unparseable URL"), ("json://", "Unparseable JSON URL")],
)
def test_a_url_apprise_cannot_use_is_refused_with_its_reason(admin_client, url, reason):
    response = admin_client.post(reverse("admin:audit_alertchannel_add"), {"name": "x", "url": url})
    assert response.status_code == 200
    (error,) = response.context["adminform"].form.errors["url"]
    assert error.startswith("Apprise cannot use this URL: ") and reason in error
    assert not AlertChannel.objects.exists()


def test_a_failing_channel_is_retried_then_recorded_as_failed(hook, settings, transactional_db):
    settings.SLUICE_ALERT_URLS = hook.url()
    hook.status = 500
    alerts.send(alerts.Alert("test", "title", "body"))
    assert alerts.flush(15)
    assert len(hook.received) == 3
    (delivery,) = AlertDelivery.objects.all()
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "500" in delivery.error


def test_a_breaker_opening_and_closing_is_alerted_once_each(
    gateway, upstream, upstream_b, api_key, hook, settings
):
    settings.SLUICE_ALERT_URLS = hook.url()
    settings.SLUICE_BREAKER_THRESHOLD = 2
    settings.SLUICE_BREAKER_COOLDOWN = 1
    make_provider(upstream, name="flaky", priority=1)
    make_provider(upstream_b, name="backup", priority=2)

    def turns(count: int) -> None:
        for _ in range(count):
            turn(gateway, api_key)

    upstream.http_fail_status = 500
    turns(1)
    upstream.http_fail_status = None
    turns(1)  # a failure then a success: the breaker never opened, nothing to say
    upstream.http_fail_status = 500
    turns(4)  # opens at the second failure; the others go to the backup
    settle()
    time.sleep(1.1)  # the cooldown ends
    upstream.http_fail_status = None
    turns(2)  # tried again, answers: closed
    settle()
    assert [body["title"] for _path, body in hook.received] == [
        "Sluice: provider “flaky” is failing; its circuit breaker opened",
        "Sluice: provider “flaky” answers again; its circuit breaker closed",
    ]


def test_the_expiry_timer_alerts_once_and_records_expired_keys_as_the_system(
    hook, settings, transactional_db
):
    from django.core.management import call_command
    from django.utils import timezone

    settings.SLUICE_ALERT_URLS = hook.url()
    soon, _raw = make_key("soon", expires_at=timezone.now() + dt.timedelta(days=3))
    make_key("later", username="bob", expires_at=timezone.now() + dt.timedelta(days=30))
    gone, _raw = make_key("gone", username="carol", expires_at=timezone.now() - dt.timedelta(hours=1))
    for _ in range(2):
        call_command("checkexpiries", stdout=open("/dev/null", "w"))  # noqa: SIM115
        assert alerts.flush(15)
    titles = [body["title"] for _path, body in hook.received]
    assert len(titles) == 1 and titles[0].startswith("Sluice: API key “soon” of alice expires on ")
    (expired,) = AuditEvent.objects.filter(action="expire")
    assert (expired.object_id, expired.actor, expired.source) == (str(gone.pk), "system", "system")


def test_start_up_names_an_unusable_env_url_in_one_line_without_its_secret(hook):
    env = {"SLUICE_ALERT_URLS": f"{hook.url()},nosuch://{SECRET_TOKEN}", "LOG_LEVEL": "INFO"}
    import os

    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "SLUICE_ALERT_URLS" in line]
    assert len(lines) == 1 and "entry 2 is not a usable Apprise URL" in lines[0], done.stderr
    assert SECRET_TOKEN not in done.stderr + done.stdout


def test_a_budget_alert_is_sent_once_by_two_gateway_processes(transactional_db, upstream, hook):
    """Two `manage.py serve` processes on one database, both seeing the key cross its budget."""
    make_provider(upstream)
    priced()
    _key, raw = make_key(daily_budget=Decimal("1.00"))
    env = {"SLUICE_ALERT_URLS": hook.url(), "SLUICE_LOG_BATCH_SECONDS": "0.02"}
    with ServeProcess(**env) as one, ServeProcess(**env) as two:
        threads = [threading.Thread(target=turn, args=(node, raw)) for node in (one, two, one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        hook.wait(1)
        time.sleep(2)  # time for a second (wrong) alert from the slower process
    assert [body["title"] for _path, body in hook.received] == [
        "Sluice: API key “team” reached 100% of its daily budget"
    ]
    assert AlertDelivery.objects.count() == 1


def test_rows_dropped_by_the_request_log_are_alerted(gateway, hook, settings):
    """Refusals without a valid key past their allowance per address are not written (the metrics count
    them); the worker's periodic check notices the counter rising."""
    from audit.events import dropped_rows
    from proxy.usage import logwriter

    settings.SLUICE_ALERT_URLS = ""
    settings.SLUICE_ALERT_CHECK_SECONDS = 3600  # no periodic check until the test asks for one
    alerts.submit(dropped_rows)  # what this process dropped before this test is not this test's
    assert alerts.flush(10)
    # From an address of its own (uvicorn believes 127.0.0.1's X-Forwarded-For): the allowance of
    # 127.0.0.1, which later tests' refusals count on, stays untouched.
    address = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
    headers = {"Authorization": "Bearer no", "X-Forwarded-For": address}
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for _ in range(logwriter.ANONYMOUS_ROWS_PER_MINUTE + 5):
            client.post("/v1/responses", json={"model": "m", "input": "x"}, headers=headers)
    assert logwriter.flush(10)  # the writer counts the dropped rows
    settings.SLUICE_ALERT_URLS = hook.url()
    settings.SLUICE_ALERT_CHECK_SECONDS = 0.1
    alerts.start(periodic=True)  # as a server's start-up does (the test's gateway runs without lifespan)
    try:
        alerts.submit(lambda: None)  # wake the worker so that it reads the shorter period
        received = hook.wait(1)
    finally:
        alerts.stop_periodic()  # the other tests of this process run no timers
    assert [body["title"] for _path, body in received] == [
        f"Sluice: node {events_node()} dropped request-log rows"
    ]
    assert received[0][1]["message"] == "5 rows could not be written; see the node's log."


def events_node() -> str:
    from audit.events import NODE

    return NODE


def test_an_upstream_refusing_websockets_is_alerted_once(gateway, upstream, api_key, hook, settings):
    from tests.test_ws_sdk import chain_three_turns

    settings.SLUICE_ALERT_URLS = hook.url()
    upstream.ws_refuse_status = 426
    make_provider(upstream, name="no-ws")
    chain_three_turns(gateway, api_key)
    settle()
    assert [body["title"] for _path, body in hook.received] == ["Sluice: provider “no-ws” refuses WebSockets"]


def test_a_node_losing_readiness_is_alerted_once_an_hour_but_not_for_a_drain(
    hook, settings, transactional_db
):
    from proxy.usage import signals

    settings.SLUICE_ALERT_URLS = hook.url()
    signals.readiness_lost.send(sender=None, down={"lifecycle": "draining"})
    for _ in range(2):
        signals.readiness_lost.send(sender=None, down={"database": "connection refused"})
    assert alerts.flush(15)
    ((_path, body),) = hook.received
    assert body["title"] == f"Sluice: node {events_node()} is not ready"
    assert body["message"] == "database: connection refused"


def test_an_expiring_key_is_mailed_to_its_owner_and_team_leads_too(smtp, settings, transactional_db):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from identity.models import Membership
    from proxy.models import Team

    port, mails = smtp
    settings.SLUICE_ALERT_URLS = f"mailto://127.0.0.1:{port}/ops@example.test?from=gw@example.test"
    team = Team.objects.create(name="blue")
    users = get_user_model().objects
    for name, role in (("bob", "lead"), ("carol", "member"), ("dan", "lead")):
        email = "" if name == "dan" else f"{name}@example.test"  # dan's address is not known
        Membership.objects.create(user=users.create(username=name, email=email), team=team, role=role)
    users.create(username="alice", email="alice@example.test")
    make_key("soon", team=team, expires_at=timezone.now() + dt.timedelta(days=2))
    call_command("checkexpiries", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert alerts.flush(15)
    # Apprise mails each recipient on its own; carol is no lead, dan has no address.
    recipients = sorted(r for m in mails for r in m.rcpt_tos)
    assert recipients == ["alice@example.test", "bob@example.test", "ops@example.test"]
    assert set(AlertDelivery.objects.values_list("channel", "status")) == {
        ("SLUICE_ALERT_URLS #1", "sent"),
        ("SLUICE_ALERT_URLS #1 (people)", "sent"),
    }


def test_a_channel_limited_to_teams_hears_only_about_them(hook, transactional_db):
    from proxy.models import Team

    red, blue = Team.objects.create(name="red"), Team.objects.create(name="blue")
    for name in ("red", "all"):
        channel = AlertChannel(name=name)
        channel.set_url(hook.url(name))
        channel.save()
    AlertChannel.objects.get(name="red").teams.add(red)
    for team_id in (red.pk, blue.pk, None):
        alerts.send(alerts.Alert("test", f"about {team_id}", "body", team_id=team_id))
    assert alerts.flush(15)
    heard = sorted((path, body["title"]) for path, body in hook.received)
    assert heard == sorted(
        [
            ("/red", f"about {red.pk}"),
            ("/all", f"about {red.pk}"),
            ("/all", f"about {blue.pk}"),
            ("/all", "about None"),
        ]
    )
