"""Request-log rows written off the hot path: turns are queued in memory and a thread inserts them in
batches, pricing each from ``ModelPrice`` as it goes."""

import atexit
import datetime as dt
import logging
import os
import queue
import threading
import time
from decimal import Decimal
from typing import Any

from django.conf import settings

from providers.registry import enabled_providers
from providers.text import storable
from proxy.common.record import UNGOVERNED, TurnRecord
from proxy.common.scrubbing import scrub
from proxy.governance.prices import model_prices, price_for
from proxy.usage import metrics, rollup, signals, tracing
from settings_app.runtime import Snapshot, tidy_connections

log = logging.getLogger(__name__)


_queue: "queue.SimpleQueue[TurnRecord | None]" = queue.SimpleQueue()
_lock = threading.Lock()
_thread: threading.Thread | None = None
_pending = 0
_idle = threading.Condition(_lock)
_wake = threading.Event()  # flush() asks the writer not to wait for the rest of its batch
_last_used_written: dict[int, float] = {}  # key id -> when its last_used_at was last written
_failing: tuple[float, str] | None = None  # since when (monotonic) and why the database refuses writes
LAST_USED_RESOLUTION = 60.0


# Refusals of requests without a valid key: at most this many rows per client address per minute, and
# this many across all addresses, so that a flood of anonymous requests (from one address or thousands)
# cannot fill the database (the metrics still count every one).
ANONYMOUS_ROWS_PER_MINUTE = 60
ANONYMOUS_ROWS_PER_MINUTE_ALL = 600
_ALL = "*"  # the entry of all addresses together (never an address)
_anonymous: dict[str, tuple[int, float]] = {}  # client address -> (rows this minute, minute started)


def _counted(address: str, now: float) -> int:
    """Rows of ``address`` this minute before this one; counts this one."""
    count, since = _anonymous.get(address, (0, now))
    if now - since >= 60:
        count, since = 0, now
    _anonymous[address] = (count + 1, since)
    return count


def _over_allowance(record: TurnRecord) -> bool:
    if record.key_id is not None or record.status < 400:
        return False
    now = time.monotonic()
    if len(_anonymous) > 10_000:  # addresses of a wide flood: forget them all rather than grow
        everyone = _anonymous.get(_ALL)
        _anonymous.clear()
        if everyone is not None:  # the cap of all addresses together is never forgotten
            _anonymous[_ALL] = everyone
    if _counted(record.client_addr, now) >= ANONYMOUS_ROWS_PER_MINUTE:
        return True
    return _counted(_ALL, now) >= ANONYMOUS_ROWS_PER_MINUTE_ALL


def submit(record: TurnRecord) -> None:
    """Queue a finished turn; never blocks, never touches the database in the caller's thread."""
    global _pending, _thread
    if record.submitted:
        return
    record.submitted = True
    if UNGOVERNED:  # a benchmark of the turn path without the log and the metrics
        return
    _make_storable(record)
    if record.finished_at is None:
        record.finished_at = time.perf_counter()
    if record.key_id is None and record.status >= 400 and _over_allowance(record):
        record.dropped = True
    with _lock:
        if _pending >= settings.SLUICE_LOG_QUEUE_ROWS:  # the database is behind: memory stays bounded
            metrics.log_dropped.labels("queue_full").inc()
            return
        _pending += 1
        if _thread is None or not _thread.is_alive():
            if _thread is None:  # a process that exits without a server shutdown still writes its rows
                atexit.register(flush)
            _thread = threading.Thread(target=_run, name="sluice-request-log", daemon=True)
            _thread.start()
    metrics.log_queue.inc()
    _queue.put(record)


def _make_storable(r: TurnRecord) -> None:
    """The one point where a turn's client strings are made storable (log rows, metrics labels)."""
    r.requested_model = storable(r.requested_model)
    r.upstream_model = storable(r.upstream_model)
    r.error_code = storable(r.error_code)
    r.session_id = storable(r.session_id)
    o = r.outcome
    o.model, o.response_id, o.error_code = storable(o.model), storable(o.response_id), storable(o.error_code)
    if r.error_code or o.error_code:  # an upstream's own code may quote its key: never stored
        r.error_code, o.error_code = (
            _scrubbed(r.error_code, r.provider_id),
            _scrubbed(o.error_code, r.provider_id),
        )


def _scrubbed(code: str, provider_id: int | None) -> str:
    """``code`` without the provider's key (from the registry snapshot: no query) or anything key-shaped."""
    if not code:
        return code
    key = next((p.api_key for p in enabled_providers._value or () if p.id == provider_id), "")
    return scrub(code, key)


def flush(timeout: float = 10.0) -> bool:
    """Wait until every submitted record is written (tests, shutdown). Returns False on timeout."""
    deadline = time.monotonic() + timeout
    with _idle:
        while _pending:
            _wake.set()  # every batch until the queue is empty, not only the first
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _idle.wait(min(remaining, 0.5))
    return True


def _lower_priority() -> None:
    """The log can wait: give the event loop the CPU first when both want it (Linux: per-thread nice).
    Named for the system too (``top -H``, and the benchmark, which reads this thread's CPU time)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("sluice-request-log"[:15])
    except (AttributeError, OSError):
        pass


def _run() -> None:
    global _pending
    _lower_priority()
    while True:
        batch = [_queue.get()]
        _wake.wait(settings.SLUICE_LOG_BATCH_SECONDS)  # gather a burst into one transaction
        _wake.clear()
        while len(batch) < 5000:
            try:
                batch.append(_queue.get_nowait())
            except queue.Empty:
                break
        try:
            _write_retrying(batch)
        except Exception:  # noqa: BLE001 - the writer outlives any batch; its rows are counted as dropped
            log.exception("could not write %d request log rows", len(batch))
            metrics.log_dropped.labels("write_failed").inc(len(batch))
        finally:
            metrics.log_queue.dec(len(batch))
            with _idle:
                _pending -= len(batch)
                _idle.notify_all()
        try:
            tidy_connections()
        except Exception:  # noqa: BLE001 - a connection that cannot even be checked is dropped next time
            log.exception("could not check the request log's database connection")


def waiting() -> str:
    """What keeps rows waiting ("" when the database takes them): /readyz reports the node degraded."""
    failing = _failing
    if failing is None or not _pending:
        return ""
    return f"{_pending} rows waiting for {time.monotonic() - failing[0]:.0f} s: {failing[1]}"


def _write_retrying(batch: list[TurnRecord]) -> None:
    """Write a batch, retrying with backoff while the database itself fails (gone, locked past its
    timeout) for up to SLUICE_LOG_RETRY_SECONDS; the rows wait meanwhile (submit() bounds how many)."""
    from django.db import connection  # like the module's other database imports: once Django is set up

    global _failing
    first = delay = 0.0
    while True:
        try:
            write_keeping_good_rows(batch)
            _failing = None
            return
        except DatabaseDown as down:
            batch, exc = down.rows, down.error  # the rows written before it failed are not written again
            now = time.monotonic()
            if not first:
                first, delay = now, 0.1
                if _failing is None:
                    log.warning("the database refuses request log rows (%r); retrying, rows wait", exc)
            _failing = (_failing[0] if _failing else now, f"{type(exc).__name__}: {str(exc)[:200]}")
            if now - first >= settings.SLUICE_LOG_RETRY_SECONDS:
                log.error(
                    "dropped %d request log rows after %.0f s of retries: %r", len(batch), now - first, exc
                )
                metrics.log_dropped.labels("write_failed").inc(len(batch))
                return
            try:
                connection.close()  # a connection the server dropped is opened again on the next try
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def write_keeping_good_rows(batch: list[TurnRecord]) -> None:
    """Write a batch; when it fails, write its halves, down to the rows that fail alone, which are dropped
    and logged once each: one bad row never costs the others theirs. A failure of the database itself
    (gone, locked) is raised: no row would get through alone, and the caller retries the batch."""
    from django.db import InterfaceError, OperationalError  # like the module's other database imports

    try:
        write(batch)
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseDown(batch, exc) from exc
    except Exception as exc:  # noqa: BLE001 - a row the database refuses must not cost the others theirs
        if len(batch) == 1:
            r = batch[0]
            log.error(
                "dropped a request log row that could not be stored (key %s, status %s): %r",
                r.key_id,
                r.status,
                exc,
            )
            metrics.log_dropped.labels("write_failed").inc()
            return
        tidy_connections()
        middle = len(batch) // 2
        try:
            write_keeping_good_rows(batch[:middle])
        except DatabaseDown as down:
            down.rows = [*down.rows, *batch[middle:]]
            raise
        write_keeping_good_rows(batch[middle:])


class DatabaseDown(Exception):
    """The database itself failed; ``rows`` are those of the batch not written yet."""

    def __init__(self, rows: list[TurnRecord], error: Exception) -> None:
        super().__init__(str(error))
        self.rows = rows
        self.error = error


def write(batch: list[TurnRecord]) -> None:
    # Imported here: the ORM and the models need Django's apps loaded; this module is imported without them.
    from django.db import IntegrityError, transaction

    prices = model_prices.get()
    priced: dict[str, Any] = {}  # model -> price, for this batch (an unpriced model scans the whole table)
    used: dict[int, dt.datetime] = {}
    rows = []
    costs = []
    for r in batch:
        o = r.outcome
        model = r.model
        price = priced.get(model, priced)
        if price is priced:
            price = priced[model] = price_for(prices, model)
        # No price: no cost, which the admin shows as "price unknown" (a cost of 0 would be a lie).
        spent = price.cost(o.input_tokens, o.cached_input_tokens, o.output_tokens) if price else None
        costs.append(spent if spent is not None else Decimal(0))
        if r.span is not None:
            tracing.end_turn(r, spent, team_names.get().get(r.team_id, ""))
        if r.dropped:
            continue
        created = dt.datetime.fromtimestamp(r.created_at, dt.UTC)
        if r.key_id is not None:
            used[r.key_id] = max(used.get(r.key_id, created), created)
        rows.append(_row(r, model, spent, created))
    now = time.monotonic()
    used = {
        k: v
        for k, v in used.items()
        if now - _last_used_written.get(k, -LAST_USED_RESOLUTION) >= LAST_USED_RESOLUTION
    }
    try:
        with transaction.atomic():
            _insert(rows)
            rollup.add(rows, COLUMNS)  # the hourly roll-up moves with the rows, or not at all
    except IntegrityError:
        # A key or provider was deleted while its turns waited here: keep the rows, without the link.
        kept = _without_dangling_links(rows)
        with transaction.atomic():
            _insert(kept)
            rollup.add(kept, COLUMNS)
    # Counted once the rows are in: a batch retried in halves is not counted twice.
    try:
        metrics.observe_batch(batch, costs)
    except Exception:  # metrics must never cost a row
        log.exception("could not update the metrics")
    signals.turn_recorded.send_robust(sender=TurnRecord, records=batch, costs=costs)  # e.g. budget alerts
    dropped = sum(1 for r in batch if r.dropped)
    if dropped:
        metrics.log_dropped.labels("rate_limited").inc(dropped)
    _mark_used(used, now)


def _mark_used(used: dict[int, dt.datetime], now: float) -> None:
    """Each key's last use, at most once per ``LAST_USED_RESOLUTION`` (a write per key, not per turn)."""
    # Imported here: the ORM and the models need Django's apps loaded; this module is imported without them.
    from django.db import transaction
    from django.db.models import F
    from django.db.models.functions import Coalesce, Greatest

    from proxy.models import ApiKey

    with transaction.atomic():
        for key_id, when in used.items():
            _last_used_written[key_id] = now
            ApiKey.objects.filter(pk=key_id).update(
                last_used_at=Greatest(Coalesce(F("last_used_at"), when), when)
            )


def _row(r: TurnRecord, model: str, spent: Decimal | None, created: dt.datetime) -> tuple:
    """The request-log row of ``r``, in ``COLUMNS`` order."""
    o = r.outcome
    finished = r.finished_at or r.started
    return (
        created,
        r.key_id,
        r.provider_id,
        r.endpoint,
        r.requested_model[:200],
        model[:200],
        r.status,
        (r.error_code or o.error_code)[:100],
        o.input_tokens,
        o.cached_input_tokens,
        o.output_tokens,
        o.reasoning_tokens,
        spent,
        (r.first_event_at - r.started) * 1000 if r.first_event_at else None,
        (finished - r.started) * 1000,
        r.client_transport,
        r.upstream_transport,
        r.fallback_reason,
        r.ws_handshake_ms,
        r.upstream_ws_url[:500],
        o.response_id[:200],
        r.session_id[:200],
        r.team_id,
        r.owner_id,
        r.trace_id,
    )


COLUMNS = (
    "created_at",
    "api_key_id",
    "provider_id",
    "endpoint",
    "requested_model",
    "upstream_model",
    "status",
    "error_code",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost",
    "time_to_first_event_ms",
    "duration_ms",
    "client_transport",
    "upstream_transport",
    "fallback_reason",
    "ws_handshake_ms",
    "upstream_ws_url",
    "response_id",
    "session_id",
    "team_id",
    "owner_id",
    "trace_id",
)


def _insert(rows: list[tuple]) -> None:
    """One multi-row INSERT per batch: the ORM's bulk_create spends most of its time preparing each field
    of each row, which a log of thousands of turns a second cannot afford."""
    # Imported here: the ORM and the models need Django's apps loaded; this module is imported without them.
    from django.db import connection

    from proxy.models import RequestLog

    ops = connection.ops
    fields = [RequestLog._meta.get_field(name) for name in COLUMNS]  # attnames for the foreign keys
    adapters = []
    for f in fields:
        if f.get_internal_type() == "DateTimeField":
            adapters.append(_datetime_adapter(connection))
        elif f.get_internal_type() == "DecimalField":
            adapters.append(lambda v, f=f: ops.adapt_decimalfield_value(v, f.max_digits, f.decimal_places))
        else:
            adapters.append(None)
    adapt = [(i, a) for i, a in enumerate(adapters) if a is not None]
    params = []
    for row in rows:
        values = list(row)
        for i, adapter in adapt:
            values[i] = adapter(values[i])
        params.append(values)
    quote = ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(RequestLog._meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _datetime_adapter(connection: Any) -> Any:
    """The backend's adapter of a datetime column; on SQLite storing UTC (the default), the text it would
    make of the writer's UTC datetimes, without its per-value settings and time-zone checks."""
    if connection.vendor == "sqlite" and connection.timezone is dt.UTC:
        return _sqlite_utc
    return connection.ops.adapt_datetimefield_value


def _sqlite_utc(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return str(value.replace(tzinfo=None))


def _without_dangling_links(rows: list[tuple]) -> list[tuple]:
    # Imported here: the user model is only ready once the apps are (this module loads with them).
    from django.contrib.auth import get_user_model

    from providers.models import Provider
    from proxy.models import ApiKey, Team

    links = (
        ("api_key_id", ApiKey),
        ("provider_id", Provider),
        ("team_id", Team),
        ("owner_id", get_user_model()),
    )
    existing = []
    for column, model in links:
        at = COLUMNS.index(column)
        ids = {r[at] for r in rows if r[at] is not None}
        existing.append((at, set(model.objects.filter(pk__in=ids).values_list("pk", flat=True))))
    fixed = []
    for row in rows:
        values = list(row)
        for at, ids in existing:
            if values[at] not in ids:
                values[at] = None
        fixed.append(tuple(values))
    return fixed


def _load_team_names() -> dict:
    from proxy.models import Team  # imported here: the models need Django's apps loaded

    return dict(Team.objects.values_list("pk", "name"))


team_names: Snapshot[dict] = Snapshot("api-keys", _load_team_names)  # for the turns' spans
