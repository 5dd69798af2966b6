"""The roll-ups: what the dashboard and the portal read equals what the request log holds, whether the cells
were added as rows were written, recomputed by ``manage.py rollup`` (once or twice), or recomputed on two
nodes at once while rows are being written."""

import datetime as dt
import threading
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.db.models import Count, Sum

from proxy.admin import dashboard
from proxy.common.labels import Endpoint
from proxy.models import LatencyDay, RequestLog, UsageDay, UsageHour
from proxy.usage import logwriter, rollup

pytestmark = pytest.mark.django_db

TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


def quantized(value: object) -> object:
    """A cost to the request log's 8 places: SQLite sums decimals as floats, on either side."""
    return Decimal(value).quantize(Decimal("1e-8")) if isinstance(value, Decimal | float) else value


def from_rows(*by: str) -> dict:
    """The rows' sums per ``by`` (a UTC day for "day"; ids 0 for none), provider tests left out."""
    rows = RequestLog.objects.exclude(endpoint=Endpoint.PROVIDER_TEST).order_by()
    if "day" in by:
        rows = rows.annotate(day=dashboard.Day("created_at"))
    sums = {"turns": Count("pk"), "cost": Sum("cost"), **{t: Sum(t) for t in TOKENS}}
    got = rows.values(*by).annotate(**sums) if by else [rows.aggregate(**sums)]
    return {
        tuple(str(0 if r[b] is None else r[b]) for b in by): tuple(quantized(r[m] or 0) for m in SUMMED)
        for r in got
    }


SUMMED = ("turns", "cost", *TOKENS)


def from_cells(model: type, *by: str) -> dict:
    sums = {m: Sum(m) for m in SUMMED}
    cells = model.objects.order_by()
    got = cells.values(*by).annotate(**sums) if by else [cells.aggregate(**sums)]
    return {tuple(str(r[b]) for b in by): tuple(quantized(r[m]) for m in SUMMED) for r in got if r["turns"]}


def latency_from_rows() -> dict:
    found: dict = {}
    rows = RequestLog.objects.exclude(endpoint=Endpoint.PROVIDER_TEST).exclude(time_to_first_event_ms=None)
    for when, provider, model, ms in rows.values_list(
        "created_at", "provider_id", "upstream_model", "time_to_first_event_ms"
    ):
        cell = (str(when.astimezone(dt.UTC).date()), str(provider or 0), model, str(rollup.bucket(ms)))
        found[cell] = found.get(cell, 0) + 1
    return found


def latency_from_cells() -> dict:
    cells = LatencyDay.objects.values_list("day", "provider_id", "upstream_model", "bucket", "turns")
    return {(str(d), str(p), m, str(b)): n for d, p, m, b, n in cells if n}


def check_equal() -> None:
    """Every roll-up table sums to the rows, whole and per each column the pages group or filter by."""
    assert from_rows()[()][0] > 0
    for by in (
        (),
        ("api_key_id",),
        ("team_id",),
        ("provider_id",),
        ("upstream_model",),
        ("fallback_reason",),
    ):
        assert from_cells(UsageHour, *by) == from_rows(*by), by
        assert from_cells(UsageDay, *by) == from_rows(*by), by
    assert from_cells(UsageDay, "day", "owner_id", "client_transport") == from_rows(
        "day", "owner_id", "client_transport"
    )
    assert latency_from_cells() == latency_from_rows()
    refused = RequestLog.objects.filter(status__gte=400, provider__isnull=True).count()
    assert (
        UsageDay.objects.filter(status_class__gte=4, provider_id=0).aggregate(n=Sum("turns"))["n"] == refused
    )
    u = dashboard.usage(
        dashboard.parse_filters({"start": (dt.date.today() - dt.timedelta(days=10)).isoformat()})
    )
    whole = dict(zip(SUMMED, from_rows()[()], strict=True))
    assert (u.totals["turns"], quantized(u.totals["cost"]), u.totals["input"]) == (
        whole["turns"],
        whole["cost"],
        whole["input_tokens"],
    )
    assert sum(r["turns"] for r in u.ttfe) == RequestLog.objects.exclude(time_to_first_event_ms=None).count()


def snapshot() -> list:
    return [
        sorted(m.objects.values_list(*rollup.cell_columns(m), "turns"))
        for m in (UsageHour, UsageDay, LatencyDay)
    ]


def test_the_roll_ups_kept_as_rows_are_written_and_rebuilt_equal_the_rows():
    call_command("filllogs", "--rows", "3000", "--days", "3", stdout=StringIO())
    check_equal()
    written = snapshot()
    cells = sum(len(table) for table in written)
    assert (
        len(written[1]) < len(written[0]) < 3000
    )  # a day's cells are fewer than its hours', fewer than rows
    for _ in range(2):  # idempotent: run twice, the same cells
        out = StringIO()
        call_command("rollup", stdout=out)
        assert f"Wrote {cells} roll-up cells." in out.getvalue()
        assert snapshot() == written
        check_equal()


def test_rollup_catches_up_on_rows_the_roll_up_has_not_seen():
    call_command("filllogs", "--rows", "500", "--days", "2", stdout=StringIO())
    today = dt.datetime.now(dt.UTC).date()
    UsageHour.objects.filter(hour__gte=dt.datetime.now(dt.UTC) - dt.timedelta(hours=12)).delete()
    UsageDay.objects.filter(day=today - dt.timedelta(days=1)).delete()
    LatencyDay.objects.filter(day=today - dt.timedelta(days=1)).delete()
    assert from_cells(UsageDay)[()][0] < from_rows()[()][0]  # the days of an outage
    call_command("rollup", "--days", "2", stdout=StringIO())
    check_equal()


def test_pruning_the_log_prunes_the_same_days_of_the_roll_up():
    call_command("filllogs", "--rows", "900", "--days", "3", stdout=StringIO())
    before = from_cells(UsageDay)[()][0]
    call_command("prunelogs", "--older-than", "1", stdout=StringIO())
    assert from_rows()[()][0] < before  # two of the three days are gone
    check_equal()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="nodes side by side need PostgreSQL")
def test_two_nodes_rolling_up_while_rows_are_written_count_every_row_once():
    """Two nodes run ``manage.py rollup`` over the same days again and again while a log writer adds
    batches: the writer's increments are neither lost under a rebuild's sums nor counted twice."""
    call_command("filllogs", "--rows", "2000", "--days", "2", stdout=StringIO())
    template = list(
        RequestLog.objects.order_by("-created_at").values_list(*logwriter.COLUMNS)[:20]
    )  # rows of today, as the writer would write them again
    stop = threading.Event()
    errors: list[BaseException] = []

    def node() -> None:
        try:
            while not stop.is_set():
                call_command("rollup", "--days", "1", stdout=StringIO())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            connections.close_all()

    def writer() -> None:
        try:
            for _batch in range(40):
                with transaction.atomic():
                    logwriter._insert(template)
                    rollup.add(template, logwriter.COLUMNS)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
        finally:
            connections.close_all()

    nodes = [threading.Thread(target=node) for _ in range(2)]
    writing = threading.Thread(target=writer)
    for t in [*nodes, writing]:
        t.start()
    writing.join(120)
    stop.set()
    for t in nodes:
        t.join(120)
    assert not errors, errors
    assert RequestLog.objects.count() == 2000 + 40 * len(template)
    check_equal()
