"""The roll-ups of the request log: what the usage dashboard and the portal read instead of the rows.

- ``UsageHour``: per UTC hour and cell column (proxy/models.py ``CELL_COLUMNS``);
- ``UsageDay``: per UTC day, cell column and owner: what the pages read (a month is a few thousand cells);
- ``LatencyDay``: per UTC day, provider and model, how many turns had their time to first event in each
  5 %-wide bucket: the dashboard's latency percentiles.

A table's cell columns are the fields of its unique constraint: the models say them once.

The log writer adds each batch to them in the transaction that inserts the batch (``add``: one upsert of
increments per cell), so a batch is in all of them or in none. ``rebuild`` recomputes whole UTC days from
the rows themselves, in one transaction: ``manage.py rollup`` runs it after rows came in another way (an
import, rows older than the roll-up, downtime) or to repair. It writes what the rows sum to, never adds,
so running it again, or on several nodes at once, gives the same cells; on PostgreSQL it holds an advisory
lock that the writers' batches take shared, so that no batch commits between its reading of the rows and
its writing of the cells (its sums would miss that batch and overwrite its increments)."""

import datetime as dt
import math
from collections.abc import Iterable
from decimal import Decimal
from operator import itemgetter
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Func, IntegerField, Model, Sum
from django.db.models.functions import Coalesce, TruncHour

from proxy.common.labels import Endpoint
from proxy.models import LatencyDay, RequestLog, UsageDay, UsageHour

MEASURES = ("turns", "cost", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")
IDS = ("api_key_id", "team_id", "provider_id", "owner_id")
# What a row needs for its cells (besides the measures); ``rebuild`` groups the rows by these in SQL.
GROUPED = (*IDS, "upstream_model", "client_transport", "upstream_transport", "fallback_reason", "status")
GROUPED += ("error_code",)
TOKENS = MEASURES[2:]
CENT_MILLIONTH = Decimal("0.00000001")  # the request log's cost precision
LATENCY_STEP = math.log(1.05)  # a bucket's upper bound is 5 % above its lower one
LOCK = 0x534C5549  # the PostgreSQL advisory lock of the roll-up ("SLUI")


def cell_columns(model: type[Model]) -> tuple[str, ...]:
    """A roll-up table's cell: the fields of its unique constraint."""
    return tuple(model._meta.constraints[0].fields)  # type: ignore[attr-defined]


def bucket(ms: float) -> int:
    """The latency bucket of a time to first event: of its whole milliseconds, so that the rows grouped in
    SQL (``rebuild``) fall in the buckets the log writer chose."""
    return int(math.log1p(int(ms)) / LATENCY_STEP)


def bucket_ms(number: float) -> float:
    """The middle (geometric) of a bucket, in milliseconds."""
    return math.expm1((number + 0.5) * LATENCY_STEP)


def _tables() -> tuple[tuple[type[Model], tuple[str, ...]], ...]:
    return tuple((m, cell_columns(m)) for m in (UsageHour, UsageDay, LatencyDay))


class Found:
    """Cells summed in memory, per roll-up table, before they are written."""

    def __init__(self) -> None:
        self.tables = _tables()
        self.keys = [itemgetter(*columns) for _model, columns in self.tables]
        self.sums: list[dict[tuple, list]] = [{} for _ in self.tables]

    def add(self, row: dict[str, Any], sums: list, latency: Iterable[tuple[int, int]]) -> None:
        """``row``: a row's (or a group of rows') cell values with "hour" and "day"; ``sums``: its measures
        in ``MEASURES`` order; ``latency``: (bucket, turns) pairs."""
        for table, key in enumerate(self.keys[:2]):
            cell = key(row)
            found = self.sums[table].get(cell)
            if found is None:
                self.sums[table][cell] = list(sums)
            else:
                for i, value in enumerate(sums):
                    found[i] += value
        for number, turns in latency:
            self.add_latency((row["day"], row["provider_id"], row["upstream_model"], number), turns)

    def add_latency(self, cell: tuple, turns: int) -> None:
        found = self.sums[2]
        found[cell] = [found.get(cell, [0])[0] + turns]

    def write(self, increment: bool) -> int:
        for (model, columns), found in zip(self.tables, self.sums, strict=True):
            measures = tuple(m for m in MEASURES if m in {f.name for f in model._meta.fields})
            _upsert(model, columns, measures, found, increment)
        return sum(len(found) for found in self.sums)


def _cell_values(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as the cells hold them: ids 0 for none, the status's class, the UTC hour and day."""
    out = dict(row)
    for name in IDS:
        out[name] = row[name] or 0
    out["status_class"] = row["status"] // 100
    hour = row.get("hour") or row["created_at"].astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    out["hour"], out["day"] = hour, hour.date()
    return out


def cells(rows: list[tuple], columns: tuple[str, ...]) -> Found:
    """Rows of the log writer (tuples in ``columns`` order) summed per cell of each roll-up table."""
    found = Found()
    for values in rows:
        row = _cell_values(dict(zip(columns, values, strict=True)))
        sums = [1, row["cost"] or 0, *(row[t] for t in TOKENS)]
        ttfe = row["time_to_first_event_ms"]
        found.add(row, sums, () if ttfe is None else ((bucket(ttfe), 1),))
    return found


def add(rows: list[tuple], columns: tuple[str, ...]) -> None:
    """Add rows just inserted to their cells: call it in the transaction that inserted them. The provider
    test's turns stay out, as they stay out of spend and the dashboard."""
    at = columns.index("endpoint")
    rows = [row for row in rows if row[at] != Endpoint.PROVIDER_TEST]
    if rows:
        if connection.vendor == "postgresql":  # shared: batches go on side by side, a rebuild waits
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [LOCK])
        cells(rows, columns).write(increment=True)


def _upsert(
    model: type[Model],
    cell: tuple[str, ...],
    measures: tuple[str, ...],
    found: dict[tuple, list],
    increment: bool,
) -> None:
    if not found:
        return
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    names = [*cell, *measures]
    sets = ", ".join(
        f"{ops.quote_name(m)} = {table}.{ops.quote_name(m)} + excluded.{ops.quote_name(m)}"
        if increment
        else f"{ops.quote_name(m)} = excluded.{ops.quote_name(m)}"
        for m in measures
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(ops.quote_name(n) for n in names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT ({', '.join(ops.quote_name(c) for c in cell)}) DO UPDATE SET {sets}"
    )
    at = {name: i for i, name in enumerate(names)}
    adapt: dict[int, Any] = {}
    for name in names:
        kind = model._meta.get_field(name).get_internal_type()
        if kind == "DateTimeField":
            adapt[at[name]] = ops.adapt_datetimefield_value
        elif kind == "DateField":
            adapt[at[name]] = ops.adapt_datefield_value
        elif kind == "DecimalField":
            adapt[at[name]] = lambda v: ops.adapt_decimalfield_value(
                Decimal(v).quantize(CENT_MILLIONTH), 20, 8
            )
    params = []
    # In one order on every node: two writers upserting the same cells then wait, never deadlock.
    for key, sums in sorted(found.items()):
        values = [*key, *sums]
        for i, convert in adapt.items():
            values[i] = convert(values[i])
        params.append(values)
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


class Floor(Func):
    """The whole milliseconds of a time, as ``bucket`` takes them (SQLite's CAST truncates; PostgreSQL's
    rounds)."""

    output_field = IntegerField()
    template = "CAST(%(expressions)s AS INTEGER)"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="CAST(floor(%(expressions)s) AS INTEGER)", **extra)


def rebuild(first: dt.date, last: dt.date) -> int:
    """Recompute the cells of the UTC days ``first`` to ``last`` (both included) from the request log;
    returns how many cells it wrote."""

    since = dt.datetime.combine(first, dt.time.min, dt.UTC)
    until = dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min, dt.UTC)
    with transaction.atomic():
        if connection.vendor == "postgresql":  # alone: no batch, no other node's rebuild, in between
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK])
        UsageHour.objects.filter(hour__gte=since, hour__lt=until).delete()
        UsageDay.objects.filter(day__gte=first, day__lte=last).delete()
        LatencyDay.objects.filter(day__gte=first, day__lte=last).delete()
        rows = (
            RequestLog.objects.filter(created_at__gte=since, created_at__lt=until)
            .exclude(endpoint=Endpoint.PROVIDER_TEST)
            .order_by()
        )
        found = Found()
        grouped = rows.annotate(hour=TruncHour("created_at", tzinfo=dt.UTC)).values("hour", *GROUPED)
        grouped = grouped.annotate(
            turns=Count("pk"),
            c=Coalesce(Sum("cost"), Decimal(0)),
            **{t: Coalesce(Sum(t), 0) for t in TOKENS},
        )
        for r in grouped.iterator(chunk_size=10_000):
            # SQLite sums decimals as floats: back to the column's 8 places.
            sums = [r["turns"], Decimal(r["c"]).quantize(CENT_MILLIONTH), *(r[t] for t in TOKENS)]
            found.add(_cell_values(r), sums, ())
        latency = (
            rows.filter(time_to_first_event_ms__isnull=False)
            .annotate(hour=TruncHour("created_at", tzinfo=dt.UTC), ms=Floor("time_to_first_event_ms"))
            .values("hour", "provider_id", "upstream_model", "ms")
            .annotate(n=Count("pk"))
        )
        for r in latency.iterator(chunk_size=10_000):
            found.add_latency(
                (r["hour"].date(), r["provider_id"] or 0, r["upstream_model"], bucket(r["ms"])), r["n"]
            )
        return found.write(increment=False)
