"""The hourly roll-up: what the dashboard reads equals what the request log holds, whether the cells were
added as rows were written or recomputed by ``manage.py rollup`` (once or twice)."""

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count, Sum

from proxy.admin import dashboard
from proxy.models import RequestLog, UsageHour

pytestmark = pytest.mark.django_db

MEASURES = {
    "turns": ("pk", "turns"),
    "cost": ("cost", "cost"),
    "input": ("input_tokens", "input_tokens"),
    "cached": ("cached_input_tokens", "cached_input_tokens"),
    "output": ("output_tokens", "output_tokens"),
    "reasoning": ("reasoning_tokens", "reasoning_tokens"),
}


def from_rows(**filters) -> dict:
    qs = RequestLog.objects.filter(**filters).order_by()
    out = qs.aggregate(
        turns=Count("pk"),
        **{k: Sum(row) for k, (row, _) in MEASURES.items() if k != "turns"},
    )
    return {k: v or 0 for k, v in out.items()}


def from_cells(**filters) -> dict:
    qs = UsageHour.objects.filter(**filters).order_by()
    out = qs.aggregate(**{k: Sum(cell) for k, (_, cell) in MEASURES.items()})
    return {k: v or 0 for k, v in out.items()}


def per(column: str, model, measure: str, count: bool) -> dict:
    rows = model.objects.order_by().values(column).annotate(n=Count("pk") if count else Sum(measure))
    return {r[column] or 0: r["n"] for r in rows if r["n"]}


def check_equal() -> None:
    assert from_rows()["turns"] > 0
    assert from_cells() == from_rows()
    assert from_cells(status_class__gte=4, provider_id=0) == from_rows(status__gte=400, provider__isnull=True)
    for column in ("api_key_id", "provider_id", "upstream_model", "client_transport", "fallback_reason"):
        assert per(column, UsageHour, "turns", False) == per(column, RequestLog, "pk", True)
    f = dashboard.parse_filters({"start": (dt.date.today() - dt.timedelta(days=10)).isoformat()})
    u = dashboard.usage(f)

    # Costs to the request log's 8 places: SQLite sums decimals as floats, on either side.
    def kept(v: object) -> object:
        return Decimal(v).quantize(Decimal("1e-8")) if isinstance(v, Decimal | float) else v

    assert {k: kept(u.totals[k]) for k in ("turns", "cost", "input", "output")} == {
        k: kept(from_rows()[k]) for k in ("turns", "cost", "input", "output")
    }
    assert sum(d["turns"] for d in u.days) == from_rows()["turns"]


def test_the_roll_up_kept_as_rows_are_written_and_rebuilt_equals_the_rows():
    call_command("filllogs", "--rows", "3000", "--days", "3", stdout=StringIO())
    check_equal()
    cells = UsageHour.objects.count()
    assert cells > 72  # several cells an hour over three days
    for _ in range(2):  # idempotent: run twice, the same cells
        out = StringIO()
        call_command("rollup", stdout=out)
        assert f"Wrote {cells} roll-up cells." in out.getvalue()
        assert UsageHour.objects.count() == cells
        check_equal()


def test_rollup_catches_up_on_rows_the_roll_up_has_not_seen():
    call_command("filllogs", "--rows", "500", "--days", "2", stdout=StringIO())
    UsageHour.objects.filter(hour__gte=dt.datetime.now(dt.UTC) - dt.timedelta(hours=12)).delete()
    assert from_cells()["turns"] < from_rows()["turns"]  # the hours of an outage
    call_command("rollup", "--days", "1", stdout=StringIO())
    check_equal()


def test_pruning_the_log_prunes_the_same_hours_of_the_roll_up():
    call_command("filllogs", "--rows", "900", "--days", "3", stdout=StringIO())
    before = from_cells()["turns"]
    call_command("prunelogs", "--older-than", "1", stdout=StringIO())
    assert from_rows()["turns"] < before  # two of the three days are gone
    check_equal()
