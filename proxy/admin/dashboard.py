"""The usage dashboard: aggregates in SQL over the request log, for a date range and filters.

Teams and budgets: everything that reads them is in the "Governance" section below (``team_field``,
``budgets``); the rest of the dashboard does not know whether they exist.
"""

import csv
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, Func, Max, Min, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from providers.models import Provider
from proxy.admin.charts import bar_chart
from proxy.admin.limits import TEST_ENDPOINT, spend
from proxy.common.labels import endpoint_label, error_label
from proxy.common.transport import FallbackReason, Transport
from proxy.models import ApiKey, LatencyDay, RequestLog, Team, UsageDay
from proxy.templatetags.sluice_money import money
from proxy.usage import logwriter, rollup

DEFAULT_DAYS = 30
TOP = 10


class Day(Func):
    """The UTC day of ``created_at`` as YYYY-MM-DD, computed without a per-row function call in SQLite
    (Django's TruncDate calls back into Python for every row)."""

    output_field = CharField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="substr(%(expressions)s, 1, 10)", **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="((%(expressions)s AT TIME ZONE 'UTC')::date)::text",
            **extra,
        )


# ----- Governance: the one place that reads teams and budgets -----


def team_field() -> str | None:
    """The request log's team foreign key, once governance adds one."""
    names = {f.name for f in RequestLog._meta.get_fields()}
    return "team" if "team" in names else None


def team_model() -> Any:
    field_name = team_field()
    return RequestLog._meta.get_field(field_name).related_model if field_name else None


def budgets(f: "Filters") -> list[dict[str, Any]]:
    """Every key and team with a daily or monthly budget, within the filters (a key: it and its team; a
    team: it and its keys; a lead: their teams), with today's and this month's spend (UTC, provider tests
    left out) and what is left of each."""
    has_budget = ~Q(daily_budget=None) | ~Q(monthly_budget=None)
    keys = ApiKey.objects.filter(has_budget).select_related("team")
    teams = Team.objects.filter(has_budget)
    if f.teams is not None:
        keys, teams = keys.filter(team_id__in=f.teams), teams.filter(pk__in=f.teams)
    if f.key:
        team_id = ApiKey.objects.filter(pk=f.key).values_list("team_id", flat=True).first()
        keys, teams = keys.filter(pk=f.key), teams.filter(pk=team_id)
    if f.team:
        keys, teams = keys.filter(team_id=f.team), teams.filter(pk=f.team)
    rows = []
    for holders, column, kind in ((list(teams), "team_id", "team"), (list(keys), "api_key_id", "key")):
        spent = spend(column, [h.pk for h in holders])
        for holder in holders:
            day, month = spent[holder.pk]
            row = {"kind": holder._meta.verbose_name, "name": holder.name, "id": holder.pk, "filter": kind}
            percents = []
            periods = (("day", day, holder.daily_budget), ("month", month, holder.monthly_budget))
            for period, used, budget in periods:
                row[period] = {
                    "budget": budget,
                    "spent": used,
                    "left": None if budget is None else max(budget - used, Decimal(0)),
                }
                if budget:
                    percents.append(float(used / budget * 100))
            row["percent"] = max(percents, default=0.0)
            row["periods"] = [row["day"], row["month"]]
            rows.append(row)
    return sorted(rows, key=lambda r: -r["percent"])


# ----- Filters -----


@dataclass
class Filters:
    start: dt.date
    end: dt.date  # inclusive
    key: int | None = None
    team: int | None = None
    model: str = ""
    provider: int | None = None
    errors: list[str] = field(default_factory=list)
    teams: list[int] | None = None  # a team lead's teams: nothing of other teams is read (None: all)

    @property
    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def query(self) -> dict[str, str]:
        out = {"start": self.start.isoformat(), "end": self.end.isoformat()}
        for name in ("key", "team", "model", "provider"):
            value = getattr(self, name)
            if value:
                out[name] = str(value)
        return out


# Ids the database can hold (a 64-bit signed integer); dates whose next day still exists.
MAX_ID = 2**63 - 1
LAST_DAY = dt.date.max - dt.timedelta(days=1)


def _int(value: str | None) -> int | None:
    try:
        number = int(value) if value else None
    except ValueError:
        return None
    return number if number is None or 0 < number <= MAX_ID else None


def _id_filter(params: Any, name: str, errors: list[str]) -> int | None:
    """The id a filter names, or None with a message when it is not one (the page still answers)."""
    number = _int(params.get(name))
    if number is None and params.get(name):
        errors.append(_("The filter “%(name)s” is not valid; it is ignored.") % {"name": name})
    return number


def parse_filters(params: Any) -> Filters:
    today = timezone.now().astimezone(dt.UTC).date()
    errors = []
    try:
        end = dt.date.fromisoformat(params.get("end") or today.isoformat())
    except ValueError:
        end, errors = today, [*errors, _("The end date is not a date (YYYY-MM-DD).")]
    try:
        start = dt.date.fromisoformat(
            params.get("start") or (end - dt.timedelta(days=DEFAULT_DAYS - 1)).isoformat()
        )
    except ValueError:
        start, errors = (
            end - dt.timedelta(days=DEFAULT_DAYS - 1),
            [
                *errors,
                _("The start date is not a date (YYYY-MM-DD)."),
            ],
        )
    if end > LAST_DAY:
        end, errors = today, [*errors, _("The end date is out of range.")]
    if start > LAST_DAY:
        start, errors = (
            end - dt.timedelta(days=DEFAULT_DAYS - 1),
            [*errors, _("The start date is out of range.")],
        )
    if start > end:
        start, end = end, start
    if (end - start).days > 366:
        start = end - dt.timedelta(days=366)
        errors.append(_("The range was shortened to a year."))
    return Filters(
        start=start,
        end=end,
        key=_id_filter(params, "key", errors),
        team=_id_filter(params, "team", errors) if team_field() else None,
        model=(params.get("model") or "")[:200],
        provider=_id_filter(params, "provider", errors),
        errors=errors,
    )


def queryset(f: Filters) -> QuerySet[RequestLog]:
    start = dt.datetime.combine(f.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    # A provider's test turns are recorded but are not spend: outside the totals, as outside budgets.
    qs = RequestLog.objects.filter(created_at__gte=start, created_at__lt=end).exclude(endpoint=TEST_ENDPOINT)
    if f.teams is not None:
        qs = qs.filter(team_id__in=f.teams)
    if f.key:
        qs = qs.filter(api_key_id=f.key)
    if f.team and team_field():
        qs = qs.filter(**{f"{team_field()}_id": f.team})
    if f.model:
        qs = qs.filter(upstream_model=f.model)
    if f.provider:
        qs = qs.filter(provider_id=f.provider)
    return qs.order_by()


def rolled(f: Filters) -> QuerySet[UsageDay]:
    """The daily roll-up cells of ``f`` (proxy/usage/rollup.py)."""
    qs = UsageDay.objects.filter(day__gte=f.start, day__lte=f.end)
    if f.teams is not None:
        qs = qs.filter(team_id__in=f.teams)
    if f.key:
        qs = qs.filter(api_key_id=f.key)
    if f.team and team_field():
        qs = qs.filter(team_id=f.team)
    if f.model:
        qs = qs.filter(upstream_model=f.model)
    if f.provider:
        qs = qs.filter(provider_id=f.provider)
    return qs.order_by()


# ----- Aggregates -----

SUMS = {
    "cost": Coalesce(Sum("cost"), Value(Decimal(0))),
    "input": Coalesce(Sum("input_tokens"), 0),
    "cached": Coalesce(Sum("cached_input_tokens"), 0),
    "output": Coalesce(Sum("output_tokens"), 0),
    "reasoning": Coalesce(Sum("reasoning_tokens"), 0),
    "turns": Count("pk"),
}
# The same sums over roll-up cells.
ROLLED = {
    "cost": Coalesce(Sum("cost"), Value(Decimal(0))),
    "input": Coalesce(Sum("input_tokens"), 0),
    "cached": Coalesce(Sum("cached_input_tokens"), 0),
    "output": Coalesce(Sum("output_tokens"), 0),
    "reasoning": Coalesce(Sum("reasoning_tokens"), 0),
    "turns": Coalesce(Sum("turns"), 0),
}


def _sums(qs: QuerySet) -> dict[str, Any]:
    return SUMS if qs.model is RequestLog else ROLLED


def daily(qs: QuerySet, f: Filters) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sums per day, and turns per transport pair: one scan, grouped by both."""
    if qs.model is RequestLog:
        qs = qs.annotate(day=Day("created_at"))
    return _days(qs.values("day", "client_transport", "upstream_transport").annotate(**_sums(qs)), f)


def overview(cells: QuerySet[UsageDay], f: Filters) -> tuple[list[dict[str, Any]], ...]:
    """Sums per day, turns per transport pair, per fallback reason and per refusal code: one scan of the
    cells, grouped by all of them."""
    refusal = Case(
        When(status_class__gte=4, provider_id=0, then="error_code"), default=None, output_field=CharField()
    )
    grouped = list(
        cells.annotate(refusal=refusal)
        .values("day", "client_transport", "upstream_transport", "fallback_reason", "refusal")
        .annotate(**ROLLED)
    )
    days, transports = _days(grouped, f)
    total = sum(d["turns"] for d in days)
    counted: dict[str, dict[str, int]] = {"fallback_reason": {}, "refusal": {}}
    for r in grouped:
        for column, found in counted.items():
            if r[column] is not None and (r[column] or column == "refusal"):
                found[r[column]] = found.get(r[column], 0) + r["turns"]
    fallbacks, refusals = (
        [
            {name: value, "turns": n, "share": n / total * 100 if total else 0.0}
            for value, n in sorted(counted[column].items(), key=lambda item: -item[1])
        ]
        for column, name in (("fallback_reason", "fallback_reason"), ("refusal", "error_code"))
    )
    return days, transports, fallbacks, refusals


def _days(grouped: Any, f: Filters) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_day: dict[str, dict[str, Any]] = {}
    pairs: dict[tuple[str, str], int] = {}
    for r in grouped:
        day = by_day.setdefault(str(r["day"]), {k: 0 for k in SUMS})
        for k in SUMS:
            day[k] += r[k]
        pair = (r["client_transport"], r["upstream_transport"])
        pairs[pair] = pairs.get(pair, 0) + r["turns"]
    empty = {k: 0 for k in SUMS}
    days = [{**empty, **by_day.get(d.isoformat(), {}), "day": d} for d in f.days]
    total = sum(pairs.values())
    transports = [
        {
            "client_transport": c,
            "upstream_transport": u,
            "turns": n,
            "share": n / total * 100 if total else 0.0,
        }
        for (c, u), n in sorted(pairs.items(), key=lambda item: -item[1])
    ]
    return days, transports


def tops(
    qs: QuerySet, columns: list[str], named_only: tuple[str, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """The top ``columns`` values by spend: one scan grouped by all of them, ranked here. Rows without a
    value of a ``named_only`` column are left out of its table (a refused request that named no model)."""
    sums: dict[str, dict[Any, list]] = {c: {} for c in columns}
    measures = _sums(qs)
    for r in qs.values(*columns).annotate(cost=measures["cost"], turns=measures["turns"]):
        for c in columns:
            if not r[c] and c in named_only:
                continue
            entry = sums[c].setdefault(r[c], [Decimal(0), 0])
            entry[0] += r["cost"]
            entry[1] += r["turns"]
    return {
        c: [
            {"id": value, "name": value or "—", "cost": cost, "turns": turns}
            for value, (cost, turns) in sorted(found.items(), key=lambda item: (-item[1][0], -item[1][1]))[
                :TOP
            ]
        ]
        for c, found in sums.items()
    }


def latency_buckets(f: Filters) -> dict[Any, dict[int, int]]:
    """Turns per provider and latency bucket (proxy/usage/rollup.py ``bucket``), within the filters: from the
    daily latency roll-up, or for one key's or team's turns (which it does not tell apart), from the rows
    (their own index)."""
    per: dict[Any, dict[int, int]] = {}
    if f.key or f.team or f.teams is not None:
        rows = (
            queryset(f)
            .filter(time_to_first_event_ms__isnull=False)
            .annotate(ms=rollup.Floor("time_to_first_event_ms"))
            .values("provider_id", "ms")
            .annotate(n=Count("pk"))
        )
        for r in rows:
            buckets = per.setdefault(r["provider_id"] or 0, {})
            number = rollup.bucket(r["ms"])
            buckets[number] = buckets.get(number, 0) + r["n"]
        return per
    cells = LatencyDay.objects.filter(day__gte=f.start, day__lte=f.end).order_by()
    if f.model:
        cells = cells.filter(upstream_model=f.model)
    if f.provider:
        cells = cells.filter(provider_id=f.provider)
    for r in cells.values("provider_id", "bucket").annotate(n=Sum("turns")):
        per.setdefault(r["provider_id"], {})[r["bucket"]] = r["n"]
    return per


def percentiles(f: Filters, names: dict[Any, str]) -> list[dict[str, Any]]:
    """p50 and p95 of the time to first event per provider, from 5 %-wide buckets (within 2.5 %)."""
    out = []
    for provider_id, found in latency_buckets(f).items():
        counts = sorted(found.items())
        total = sum(n for _, n in counts)
        out.append(
            {
                "name": names.get(provider_id) or "—",
                "turns": total,
                "p50": _rank(counts, total * 0.5),
                "p95": _rank(counts, total * 0.95),
            }
        )
    return sorted(out, key=lambda r: -r["turns"])


def _rank(counts: list[tuple[int, int]], rank: float) -> float:
    seen = 0
    for bucket, n in counts:
        seen += n
        if seen >= rank:
            return round(rollup.bucket_ms(bucket), 1)
    return 0.0


Scope = Callable[[dt.datetime, dt.datetime], QuerySet[RequestLog]]


def sessions(scope: Scope, since: dt.datetime, until: dt.datetime, shown: int) -> list[dict[str, Any]]:
    """The latest ``shown`` Codex sessions (Codex's session header or ``prompt_cache_key``) with a turn from
    ``since`` to ``until``, latest first: when each began and last ran in the range, its turns, refusals,
    tokens, cost, a key it used and its transports ("websocket", "http" or "both"). ``scope(start, end)``:
    the request-log rows between two times that the page may show (bounded in every branch of an OR, so
    that an index reads only those). The sessions are the first ``shown`` met reading the rows newest
    first, an hour, six hours, a day, a week, then the rest (each query sorts only its window's rows),
    then only their rows are summed (the session index)."""
    latest: dict[str, None] = {}
    now = timezone.now()
    bounds = [
        until,
        *sorted({max(since, now - dt.timedelta(hours=h)) for h in (1, 6, 24, 168)}, reverse=True),
    ]
    for end, start in zip(bounds, [*bounds[1:], since], strict=True):
        if start >= end:
            continue
        window = scope(start, end).exclude(session_id="").exclude(endpoint=TEST_ENDPOINT)
        for session_id in window.order_by("-created_at").values_list("session_id", flat=True).iterator(2000):
            latest.setdefault(session_id)
            if len(latest) >= shown:
                break
        if len(latest) >= shown:
            break
    rows = scope(since, until).exclude(endpoint=TEST_ENDPOINT)
    found = list(
        rows.filter(session_id__in=list(latest))
        .order_by()
        .values("session_id")
        .annotate(
            first=Min("created_at"),
            last=Max("created_at"),
            turns=Count("pk"),
            input=Coalesce(Sum("input_tokens"), 0),
            output=Coalesce(Sum("output_tokens"), 0),
            cost=Sum("cost"),
            websocket=Count("pk", filter=Q(client_transport="websocket")),
            refused=Count("pk", filter=Q(status__gte=400)),
            key=Max("api_key_id"),
        )
    )
    found.sort(key=lambda r: r["last"], reverse=True)
    for r in found:
        r["tokens"] = r["input"] + r["output"]
        r["transport"] = (
            "websocket" if r["websocket"] == r["turns"] else "http" if not r["websocket"] else "both"
        )
    return found


def names_of(model: Any, ids: set[Any], attr: str = "name") -> dict[Any, str]:
    ids = {i for i in ids if i is not None}
    return {o.pk: getattr(o, attr) for o in model.objects.filter(pk__in=ids)} if ids else {}


@dataclass
class Usage:
    filters: Filters
    days: list[dict[str, Any]]
    totals: dict[str, Any]
    keys: list[dict[str, Any]]
    teams: list[dict[str, Any]]
    models: list[dict[str, Any]]
    providers: list[dict[str, Any]]
    transports: list[dict[str, Any]]
    fallbacks: list[dict[str, Any]]
    refusals: list[dict[str, Any]]
    ttfe: list[dict[str, Any]]
    budgets: list[dict[str, Any]]
    people: list[dict[str, Any]]


def usage(f: Filters) -> Usage:
    """All the aggregates of the page, in one transaction: on PostgreSQL with room to group a month of
    rows in memory (the default work_mem sends the sorts to disk)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL work_mem = '64MB'")
        return _usage(f)


def _usage(f: Filters) -> Usage:
    cells = rolled(f)  # the daily roll-up; the latency percentiles from theirs
    days, transports, fallbacks, refusals = overview(cells, f)
    totals = {k: sum(d[k] for d in days) for k in SUMS}
    provider_names = dict(Provider.objects.values_list("pk", "name"))
    team_column = f"{team_field()}_id" if team_field() else None
    ranked = tops(
        cells,
        ["api_key_id", "provider_id", "upstream_model", "owner_id", *([team_column] if team_column else [])],
        named_only=("upstream_model",),
    )
    key_rows = ranked["api_key_id"]
    key_names = {k.pk: str(k) for k in ApiKey.objects.filter(pk__in=[r["id"] for r in key_rows if r["id"]])}
    for r in key_rows:
        r["name"] = key_names.get(r["id"]) or _("(no key)")
    for r in ranked["provider_id"]:
        r["name"] = provider_names.get(r["id"]) or _("(no provider)")
    teams = []
    if team_column:
        team_names = {t.pk: str(t) for t in team_model().objects.all()}
        teams = ranked[team_column]
        for r in teams:
            r["name"] = team_names.get(r["id"]) or _("(no team)")
    for r in transports:
        r["client_label"] = _label(Transport, r["client_transport"])
        r["upstream_label"] = _label(Transport, r["upstream_transport"]) or _("none")
    for r in fallbacks:
        r["label"] = _label(FallbackReason, r["fallback_reason"])
    for r in refusals:
        r["label"] = error_label(r["error_code"]) or _("(no code)")
    return Usage(
        filters=f,
        days=days,
        totals=totals,
        keys=key_rows,
        teams=teams,
        models=ranked["upstream_model"],
        providers=ranked["provider_id"],
        transports=transports,
        fallbacks=fallbacks,
        refusals=refusals,
        ttfe=percentiles(f, provider_names),
        budgets=budgets(f),
        people=people(ranked["owner_id"]),
    )


def _label(choices: Any, value: str) -> str:
    try:
        return str(choices(value).label) if value else ""
    except ValueError:
        return value


# ----- CSV -----


class _Echo:
    def write(self, value: str) -> str:
        return value


# Cells a spreadsheet would read as a formula (OWASP's CSV injection list): model names, session ids, key
# and team names are the clients' and the people's own strings.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutral(cell: Any) -> Any:
    """A text cell made inert with a leading single quote when it starts like a formula; numbers kept."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def _csv_response(rows: Iterator[list[Any]], filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow([neutral(c) for c in r]) for r in rows), content_type="text/csv"
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def usd(value: Any) -> str:
    """A cost as plain digits, the same on every database (PostgreSQL keeps 8 decimals, 0 as 0E-8)."""
    return f"{Decimal(value or 0):.8f}".rstrip("0").rstrip(".")


def aggregates_csv(u: Usage) -> StreamingHttpResponse:
    def rows() -> Iterator[list[Any]]:
        yield [
            _("section"),
            _("name"),
            _("cost (USD)"),
            _("turns"),
            _("input tokens"),
            _("cached"),
            _("output tokens"),
            _("reasoning tokens"),
        ]
        for d in u.days:
            yield [
                "day",
                d["day"].isoformat(),
                usd(d["cost"]),
                d["turns"],
                d["input"],
                d["cached"],
                d["output"],
                d["reasoning"],
            ]
        for section, items in (
            ("key", u.keys),
            ("team", u.teams),
            ("model", u.models),
            ("provider", u.providers),
        ):
            for r in items:
                yield [section, r["name"], usd(r["cost"]), r["turns"]]
        for r in u.transports:
            yield ["transport", f"{r['client_transport']}/{r['upstream_transport']}", "", r["turns"]]
        for r in u.fallbacks:
            yield ["fallback", r["fallback_reason"], "", r["turns"]]
        for r in u.refusals:
            yield ["refusal", r["error_code"], "", r["turns"]]
        for r in u.ttfe:
            yield ["ttfe_ms", r["name"], "", r["turns"], r["p50"], r["p95"]]
        for r in u.budgets:
            for period in ("day", "month"):
                if r[period]["budget"] is not None:
                    spent, budget = r[period]["spent"], r[period]["budget"]
                    yield [f"budget_{period}", f"{r['filter']}:{r['name']}", usd(spent), "", usd(budget)]

    f = u.filters
    return _csv_response(rows(), f"sluice-usage-{f.start}-{f.end}.csv")


# The request log's own columns, less the upstream WebSocket details only the detail page needs.
LOG_COLUMNS = tuple(c for c in logwriter.COLUMNS if c not in ("ws_handshake_ms", "upstream_ws_url"))


# Beside the ids, the names a chargeback needs: the key's, its owner's, the team's, the provider's.
NAME_COLUMNS = {
    "key_name": "api_key__name",
    "owner_name": "owner__username",
    "team_name": "team__name",
    "provider_name": "provider__name",
}


def rows_csv(f: Filters) -> StreamingHttpResponse:
    def rows() -> Iterator[list[Any]]:
        yield [*LOG_COLUMNS, *NAME_COLUMNS]
        columns = [*LOG_COLUMNS, *NAME_COLUMNS.values()]
        for values in queryset(f).order_by("created_at").values_list(*columns).iterator(2000):
            yield list(values)

    return _csv_response(rows(), f"sluice-requests-{f.start}-{f.end}.csv")


def chargeback_csv(f: Filters, period: str) -> StreamingHttpResponse:
    """Every key's usage per UTC day or month (``period``), provider and model, with names."""
    from django.contrib.auth import get_user_model  # imported here: the user model is ready with the apps

    from providers.models import Provider

    groups = ("api_key_id", "owner_id", "team_id", "provider_id", "upstream_model")
    width = 7 if period == "month" else 10  # "YYYY-MM" of "YYYY-MM-DD"
    merged: dict[tuple, dict[str, Any]] = {}
    for r in queryset(f).annotate(day=Day("created_at")).values("day", *groups).annotate(**SUMS):
        sums = merged.setdefault((r["day"][:width], *(r[g] for g in groups)), dict.fromkeys(SUMS, 0))
        for k in SUMS:
            sums[k] += r[k] or 0
    names = {
        "api_key_id": names_of(ApiKey, {k[1] for k in merged}),
        "owner_id": names_of(get_user_model(), {k[2] for k in merged}, "username"),
        "team_id": names_of(Team, {k[3] for k in merged}),
        "provider_id": names_of(Provider, {k[4] for k in merged}),
    }

    def rows() -> Iterator[list[Any]]:
        yield [
            _("month") if period == "month" else _("day"),
            *(_(c) for c in ("API key", "owner", "team", "provider", "model", "turns")),
            *(_(c) for c in ("input tokens", "cached input tokens", "output tokens", "reasoning tokens")),
            _("cost (USD)"),
        ]
        for key in sorted(merged, key=lambda k: tuple("" if v is None else str(v) for v in k)):
            r = merged[key]
            people = [names[g].get(v, "") for g, v in zip(groups[:4], key[1:5], strict=True)]
            tokens = [r["input"], r["cached"], r["output"], r["reasoning"]]
            yield [key[0], *people, key[5], r["turns"], *tokens, usd(r["cost"])]

    return _csv_response(rows(), f"sluice-chargeback-{period}-{f.start}-{f.end}.csv")


def people(ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spend per person (the owner of the keys when the turns ran), the top ten (``tops``' ranking of the
    owners), named."""
    from django.contrib.auth import get_user_model  # imported here: the user model is ready with the apps

    names = names_of(get_user_model(), {r["id"] for r in ranked}, "username")
    return [{**r, "id": r["id"] or None, "name": names.get(r["id"]) or _("(no owner)")} for r in ranked]


def model_choices(f: Filters) -> list[str]:
    """The models of the last 90 days (of the lead's teams), for the model filter: from the roll-up."""
    cells = UsageDay.objects.filter(day__gte=timezone.now().astimezone(dt.UTC).date() - dt.timedelta(days=90))
    if f.teams is not None:
        cells = cells.filter(team_id__in=f.teams)
    models = cells.exclude(upstream_model="").values_list("upstream_model", flat=True)
    return list(models.distinct().order_by("upstream_model")[:200])


def render_context(request: HttpRequest, u: Usage) -> dict[str, Any]:
    """What the template needs beyond the aggregates: charts and the filter choices."""
    labels = [d["day"].strftime("%m-%d") for d in u.days]
    count = lambda v: formats.number_format(v, 0, force_grouping=True)  # noqa: E731
    charts = [
        (
            _("Spend per day (USD)"),
            bar_chart(
                labels, [(_("spend"), [float(d["cost"]) for d in u.days])], money, _("Spend per day (USD)")
            ),
        ),
        (
            _("Tokens per day"),
            bar_chart(
                labels,
                [
                    (_("input (not cached)"), [d["input"] - d["cached"] for d in u.days]),
                    (_("cached input"), [d["cached"] for d in u.days]),
                    (_("output (not reasoning)"), [d["output"] - d["reasoning"] for d in u.days]),
                    (_("reasoning"), [d["reasoning"] for d in u.days]),
                ],
                count,
                _("Tokens per day"),
            ),
        ),
        (
            _("Turns per day"),
            bar_chart(labels, [(_("turns"), [d["turns"] for d in u.days])], count, _("Turns per day")),
        ),
    ]
    keys = ApiKey.objects.all()
    teams = team_model().objects.all() if team_field() else None
    if u.filters.teams is not None:
        keys = keys.filter(team_id__in=u.filters.teams)
        teams = teams.filter(pk__in=u.filters.teams) if teams is not None else None
    return {
        "usage": u,
        "people": u.people,
        "charts": charts,
        "keys": keys.order_by("name").values_list("pk", "name"),
        "providers": Provider.objects.order_by("name").values_list("pk", "name"),
        "models": model_choices(u.filters),
        "teams": teams,
        "query": u.filters.query(),
        "rows_range": urlencode(
            {
                # UTC days, as the dashboard counts them (a bare date would be a naive datetime).
                "created_at__gte": dt.datetime.combine(u.filters.start, dt.time.min, dt.UTC).isoformat(),
                "created_at__lt": dt.datetime.combine(
                    u.filters.end + dt.timedelta(days=1), dt.time.min, dt.UTC
                ).isoformat(),
            }
        ),
        "endpoint_label": endpoint_label,
    }
