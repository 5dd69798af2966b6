"""The hourly roll-up of the request log (``UsageHour``): what the usage dashboard reads for whole hours.

The log writer adds each batch to it in the transaction that inserts the batch (``add``: one upsert of
increments per cell), so a batch is in both or in neither. ``rebuild`` recomputes whole hours from the rows
themselves, in one transaction per call: ``manage.py rollup`` runs it after rows came in another way (an
import, rows older than the roll-up) or to repair; running it again, or on several nodes, gives the same
cells."""

import datetime as dt
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce, TruncHour

from proxy.common.labels import Endpoint

CELL = (
    "hour",
    "api_key_id",
    "team_id",
    "provider_id",
    "upstream_model",
    "client_transport",
    "upstream_transport",
    "fallback_reason",
    "status_class",
    "error_code",
)
MEASURES = ("turns", "cost", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


def cells(rows: list[tuple], columns: tuple[str, ...]) -> dict[tuple, list]:
    """Rows of the log writer (tuples in ``columns`` order) summed per roll-up cell."""
    at = {name: i for i, name in enumerate(columns)}
    out: dict[tuple, list] = {}
    for row in rows:
        created: dt.datetime = row[at["created_at"]]
        cell = (
            created.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0),
            row[at["api_key_id"]] or 0,
            row[at["team_id"]] or 0,
            row[at["provider_id"]] or 0,
            row[at["upstream_model"]],
            row[at["client_transport"]],
            row[at["upstream_transport"]],
            row[at["fallback_reason"]],
            row[at["status"]] // 100,
            row[at["error_code"]],
        )
        sums = out.get(cell)
        if sums is None:
            sums = out[cell] = [0, Decimal(0), 0, 0, 0, 0]
        sums[0] += 1
        sums[1] += row[at["cost"]] or 0
        sums[2] += row[at["input_tokens"]]
        sums[3] += row[at["cached_input_tokens"]]
        sums[4] += row[at["output_tokens"]]
        sums[5] += row[at["reasoning_tokens"]]
    return out


CENT_MILLIONTH = Decimal("0.00000001")  # the request log's cost precision


def add(rows: list[tuple], columns: tuple[str, ...]) -> None:
    """Add rows just inserted to their cells: call it in the transaction that inserted them. The provider
    test's turns stay out, as they stay out of spend and the dashboard."""
    at = columns.index("endpoint")
    rows = [row for row in rows if row[at] != Endpoint.PROVIDER_TEST]
    if rows:
        _upsert(cells(rows, columns), increment=True)


def _upsert(found: dict[tuple, list], increment: bool) -> None:
    from proxy.models import UsageHour

    ops = connection.ops
    table = ops.quote_name(UsageHour._meta.db_table)
    names = [*CELL, *MEASURES]
    cost = UsageHour._meta.get_field("cost")
    sets = ", ".join(
        f"{ops.quote_name(m)} = {table}.{ops.quote_name(m)} + excluded.{ops.quote_name(m)}"
        if increment
        else f"{ops.quote_name(m)} = excluded.{ops.quote_name(m)}"
        for m in MEASURES
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(ops.quote_name(n) for n in names)}) "
        f"VALUES ({', '.join(['%s'] * len(names))}) "
        f"ON CONFLICT ({', '.join(ops.quote_name(c) for c in CELL)}) DO UPDATE SET {sets}"
    )
    params = []
    # In one order on every node: two writers upserting the same cells then wait, never deadlock.
    for cell, sums in sorted(found.items()):
        values: list[Any] = [ops.adapt_datetimefield_value(cell[0]), *cell[1:], *sums]
        values[len(CELL) + 1] = ops.adapt_decimalfield_value(sums[1], cost.max_digits, cost.decimal_places)
        params.append(values)
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def rebuild(start: dt.datetime, end: dt.datetime) -> int:
    """Recompute the cells of the whole hours from ``start`` to ``end`` (both rounded down to the hour)
    from the request log; returns how many cells it wrote."""
    from proxy.models import RequestLog, UsageHour

    start = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    found: dict[tuple, list] = {}
    with transaction.atomic():
        UsageHour.objects.filter(hour__gte=start, hour__lt=end).delete()
        rows = (
            RequestLog.objects.filter(created_at__gte=start, created_at__lt=end)
            .exclude(endpoint=Endpoint.PROVIDER_TEST)
            .order_by()
            .annotate(h=TruncHour("created_at", tzinfo=dt.UTC))
            .values(
                "h",
                "api_key_id",
                "team_id",
                "provider_id",
                "upstream_model",
                "client_transport",
                "upstream_transport",
                "fallback_reason",
                "status",
                "error_code",
            )
            .annotate(
                turns=Count("pk"),
                c=Coalesce(Sum("cost"), Decimal(0)),
                i=Coalesce(Sum("input_tokens"), 0),
                ci=Coalesce(Sum("cached_input_tokens"), 0),
                o=Coalesce(Sum("output_tokens"), 0),
                r=Coalesce(Sum("reasoning_tokens"), 0),
            )
        )
        for r in rows.iterator(chunk_size=10_000):
            cell = (
                r["h"],
                r["api_key_id"] or 0,
                r["team_id"] or 0,
                r["provider_id"] or 0,
                r["upstream_model"],
                r["client_transport"],
                r["upstream_transport"],
                r["fallback_reason"],
                r["status"] // 100,
                r["error_code"],
            )
            sums = found.setdefault(cell, [0, Decimal(0), 0, 0, 0, 0])
            for j, name in enumerate(("turns", "c", "i", "ci", "o", "r")):
                sums[j] += r[name]
        for sums in found.values():  # SQLite sums decimals as floats: back to the column's 8 places
            sums[1] = Decimal(sums[1]).quantize(CENT_MILLIONTH)
        _upsert(found, increment=False)
    return len(found)
