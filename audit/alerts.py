"""Alerts through Apprise, delivered by a worker thread: nothing here runs on a turn's path.

Callers (signal receivers in the event loop or the log writer's thread) only queue work. The worker
decides "once" with a unique database row per (subject, threshold, period), so a fleet sends one alert
however many nodes see the crossing, then delivers to every channel with retries and records each
delivery.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import apprise
from django.conf import settings
from django.db import IntegrityError, transaction

from audit.models import AlertChannel, AlertDelivery, AlertSent, DeliveryStatus
from settings_app.runtime import tidy_connections

log = logging.getLogger("sluice.alerts")


@dataclass(frozen=True)
class Alert:
    event: str  # budget, key-expiring, breaker-open, breaker-closed, websocket-refused, log-dropped, ...
    title: str
    body: str
    team_id: int | None = None
    once: tuple[str, str, str] | None = None  # (subject, threshold, period)
    # People the alert concerns (a key's owner, its team's leads): e-mailed too, through each e-mail
    # channel's server, besides the channel's own recipients.
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Channel:
    name: str
    url: str
    teams: frozenset[int] = field(default_factory=frozenset)


def parse_error(url: str) -> str:
    """Apprise's own reason for refusing a URL, or "" when it accepts it."""
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        plugin = apprise.Apprise.instantiate(url)
    if plugin is not None:
        return ""
    reason = " ".join(line.strip() for line in captured.getvalue().splitlines() if line.strip())
    return _scrub(reason or "not a URL Apprise knows", url)


def _scrub(text: str, url: str) -> str:
    """Apprise masks secrets in what it logs; a URL quoted whole is still taken out."""
    return text.replace(url, "<url>") if url else text


def masked(url: str) -> str:
    plugin = apprise.Apprise.instantiate(url)
    shown = plugin.url(privacy=True) if plugin is not None else url.split("://", 1)[0] + "://…"
    return shown.split("?", 1)[0][:120]


def env_urls() -> list[str]:
    return [u.strip() for u in settings.SLUICE_ALERT_URLS.split(",") if u.strip()]


def check_env_urls() -> None:
    """At start-up: one clear line per URL Apprise cannot use (never the URL itself: it holds tokens)."""
    for number, url in enumerate(env_urls(), start=1):
        reason = parse_error(url)
        if reason:
            log.error("SLUICE_ALERT_URLS entry %d is not a usable Apprise URL, skipped: %s", number, reason)


def configured() -> bool:
    """Whether any channel exists: without one, nothing is worth deciding (or writing) at all."""
    return bool(env_urls()) or AlertChannel.objects.filter(enabled=True).exists()


def channels(team_id: int | None) -> list[Channel]:
    found = [Channel(f"SLUICE_ALERT_URLS #{n}", url) for n, url in enumerate(env_urls(), start=1)]
    for channel in AlertChannel.objects.filter(enabled=True).prefetch_related("teams"):
        teams = frozenset(t.pk for t in channel.teams.all())
        if not teams or team_id in teams:
            found.append(Channel(channel.name, channel.url, teams))
    return found


def notify_once(url: str, alert: Alert) -> str:
    """One attempt; "" on success, else the reason."""
    sender = apprise.Apprise()
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured:
        if not sender.add(url):
            return _scrub(captured.getvalue().strip() or "not a usable Apprise URL", url)
        ok = sender.notify(body=alert.body, title=alert.title)
    if ok:
        return ""
    return _scrub(" ".join(captured.getvalue().split()) or "delivery failed", url)[:2000]


def deliver(channel: Channel, alert: Alert, attempts: int | None = None) -> AlertDelivery:
    """Deliver with retries and a doubling pause between them; record the outcome either way."""
    attempts = attempts or settings.SLUICE_ALERT_ATTEMPTS
    pause = settings.SLUICE_ALERT_BACKOFF_SECONDS
    error = ""
    for attempt in range(1, attempts + 1):
        error = notify_once(channel.url, alert)
        if not error:
            break
        if attempt < attempts:
            time.sleep(pause)
            pause *= 2
    if error:
        log.warning("alert %s to %s failed %d times: %s", alert.event, channel.name, attempt, error)
    return AlertDelivery.objects.create(
        channel=channel.name[:120],
        event=alert.event[:40],
        title=alert.title[:300],
        status=DeliveryStatus.FAILED if error else DeliveryStatus.SENT,
        attempts=attempt,
        error=error,
    )


def claim(subject: str, threshold: str, period: str) -> bool:
    """True for the first caller in the whole fleet, False for every later one."""
    try:
        with transaction.atomic():
            AlertSent.objects.create(subject=subject[:100], threshold=threshold[:50], period=period[:20])
    except IntegrityError:
        return False
    return True


_local_claims: set[tuple[str, str, str]] = set()


def _claimed(once: tuple[str, str, str]) -> bool:
    try:
        return claim(*once)
    except Exception:  # noqa: BLE001 - the database is down (the very thing a readiness alert reports)
        if once in _local_claims:
            return False
        _local_claims.add(once)
        return True


def handle(alert: Alert) -> None:
    try:
        targets = channels(alert.team_id)
    except Exception:  # noqa: BLE001 - without the database, the environment's channels still work
        targets = [Channel(f"SLUICE_ALERT_URLS #{n}", u) for n, u in enumerate(env_urls(), start=1)]
    if not targets or (alert.once is not None and not _claimed(alert.once)):
        return
    for channel in targets + personal(targets, alert.recipients):
        try:
            deliver(channel, alert)
        except Exception:  # noqa: BLE001 - one channel's failure never costs the others theirs
            log.exception("could not deliver alert %s to channel %s", alert.event, channel.name)


def personal(targets: list[Channel], recipients: tuple[str, ...]) -> list[Channel]:
    """The first e-mail channel, addressed to ``recipients`` instead of its own ``to``."""
    if not recipients:
        return []
    for channel in targets:
        scheme, _sep, rest = channel.url.partition("://")
        if scheme not in ("mailto", "mailtos"):
            continue
        base, _q, query = rest.partition("?")
        params = [p for p in query.split("&") if p and not p.lower().startswith("to=")]
        params.append("to=" + ",".join(recipients))
        # The path names recipients too (mailto://host/ops@example.com): keep only host and port.
        host = base.split("/", 1)[0]
        return [Channel(f"{channel.name} (people)", f"{scheme}://{host}?{'&'.join(params)}")]
    return []


# The worker: jobs are callables (an Alert's delivery, a spend check); a queue keeps callers unblocked.
_queue: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
_lock = threading.Condition()
_pending = 0
_thread: threading.Thread | None = None
_periodic: list[Callable[[], None]] = []
_periodic_on = threading.Event()  # servers only: a command or a test process runs no timers


def every_period(job: Callable[[], None]) -> None:
    """Run ``job`` in the worker every SLUICE_ALERT_CHECK_SECONDS (checks of this process's counters, the
    expiry timer)."""
    _periodic.append(job)


def start(periodic: bool = False) -> None:
    """Start the worker; idempotent. The server's start-up asks for the periodic checks too, which then
    run without waiting for a first alert."""
    global _thread
    if periodic:
        _periodic_on.set()
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="sluice-alerts", daemon=True)
            _thread.start()


def stop_periodic() -> None:
    """No more periodic checks in this process (a test that turned them on, turning them off)."""
    _periodic_on.clear()


def submit(job: Callable[[], Any]) -> None:
    """Queue work for the worker thread; never blocks and never touches the database."""
    global _pending
    with _lock:
        _pending += 1
    start()
    _queue.put(job)


def send(alert: Alert) -> None:
    submit(lambda: handle(alert))


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued job is done (tests, shutdown). False on timeout."""
    deadline = time.monotonic() + timeout
    with _lock:
        while _pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _lock.wait(min(remaining, 0.2))
    return True


def _run() -> None:
    global _pending
    last_periodic = time.monotonic()
    while True:
        period = settings.SLUICE_ALERT_CHECK_SECONDS
        try:
            job = _queue.get(timeout=max(0.01, period - (time.monotonic() - last_periodic)))
        except queue.Empty:
            job = None
        if job is not None:
            try:
                job()
            except Exception:  # noqa: BLE001 - the worker outlives any job
                log.exception("alert job failed")
            finally:
                with _lock:
                    _pending -= 1
                    _lock.notify_all()
        worked = job is not None
        if _periodic_on.is_set() and time.monotonic() - last_periodic >= period:
            last_periodic, worked = time.monotonic(), True
            for periodic in _periodic:
                try:
                    periodic()
                except Exception:  # noqa: BLE001 - see above
                    log.exception("periodic alert check failed")
        if not worked:
            continue  # an idle worker leaves the database alone
        try:
            tidy_connections()
        except Exception:  # noqa: BLE001 - a broken connection is replaced on next use
            log.exception("could not check the alert worker's database connection")
