"""What limits a key: its own limits and its team's side by side, the tighter one marked, what is used and
left of it, and when it resets; for the key and team pages and the key list."""

import datetime as dt
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Q, Sum
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from proxy.governance import limits
from proxy.models import ApiKey, RequestLog, Team
from proxy.templatetags.sluice_money import money

TEST_ENDPOINT = "provider_test"  # a provider's test turns: recorded, never spend


def spend(column: str, ids: list[int]) -> dict[int, tuple[Decimal, Decimal]]:
    """Spend of each key or team (``column``: "api_key_id" or "team_id") this UTC day and this UTC month,
    from the request log (the counters exist only while a budget does), provider tests left out."""
    clock = limits.Clock.at(time.time())
    year, month = divmod(clock.month, 100)
    month_start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    day_start = dt.datetime.fromtimestamp(clock.day_ends - 86400, dt.UTC)
    rows = (
        RequestLog.objects.filter(created_at__gte=month_start, **{f"{column}__in": ids})
        .exclude(endpoint=TEST_ENDPOINT)
        .values(column)
        .annotate(month=Sum("cost"), day=Sum("cost", filter=Q(created_at__gte=day_start)))
    )
    found = {r[column]: (r["day"] or Decimal(0), r["month"] or Decimal(0)) for r in rows}
    return {pk: found.get(pk, (Decimal(0), Decimal(0))) for pk in ids}


@dataclass(slots=True)
class Line:
    label: str
    own: Any  # the key's value (None: no limit)
    team: Any  # the team's value
    used: Any  # None: not counted
    money: bool = False
    resets: float | None = None  # epoch seconds

    @property
    def applies(self) -> Any:
        values = [v for v in (self.own, self.team) if v is not None]
        return min(values) if values else None

    @property
    def tighter(self) -> str:
        """ "key" or "team": whose limit applies (the key's when both are equal); "" without a limit."""
        if self.applies is None:
            return ""
        return "key" if self.own is not None and self.own == self.applies else "team"


LINES = (
    ("rpm", gettext_lazy("requests per minute"), "requests", False, "window"),
    ("tpm", gettext_lazy("tokens per minute"), "tokens", False, "window"),
    ("concurrency", gettext_lazy("turns in flight"), "slots", False, None),
    ("daily_budget", gettext_lazy("daily budget (USD)"), "day", True, "day"),
    ("monthly_budget", gettext_lazy("monthly budget (USD)"), "month", True, "month"),
)


def lines(key: ApiKey | None, team: Team | None) -> list[Line]:
    """The limits of a key (with its team's) or of a team alone, with their usage."""
    holder = key if key is not None else team
    scope = f"k{key.pk}" if key is not None else f"t{team.pk}"  # type: ignore[union-attr]
    counted = limits.quota_of("", "", holder) is not None
    counters = limits.usage(scope) if counted else None
    if key is not None:
        day, month = spend("api_key_id", [key.pk])[key.pk]
    else:
        day, month = spend("team_id", [team.pk])[team.pk]  # type: ignore[union-attr]
    clock = limits.Clock.at(time.time())
    ends = {"window": clock.window_ends, "day": clock.day_ends, "month": clock.month_ends, None: None}
    out = []
    for field, label, attribute, is_money, period in LINES:
        own = getattr(key, field) if key is not None else None
        of_team = getattr(team, field) if team is not None else None
        if key is None:
            own, of_team = of_team, None
        if is_money:
            used: Any = day if attribute == "day" else month
        else:
            used = getattr(counters, attribute) if counters is not None else None
        out.append(Line(str(label), own, of_team, used, is_money, ends[period]))
    return out


def _shown(value: Any, is_money: bool) -> str:
    if value is None:
        return "—"
    return money(value) if is_money else formats.number_format(value, force_grouping=True)


def _resets(at: float | None) -> str:
    if at is None:
        return "—"
    when = dt.datetime.fromtimestamp(at, dt.UTC)
    return _("%(when)s UTC (in %(left)s)") % {
        "when": formats.date_format(when, "SHORT_DATETIME_FORMAT"),
        "left": timeuntil(when, timezone.now(), depth=1),
    }


def table(key: ApiKey | None, team: Team | None) -> SafeString:
    """The effective limits as an HTML table (the key's and its team's columns for a key)."""
    rows = []
    for line in lines(key, team):
        applies = line.applies
        left = None
        if applies is not None and line.used is not None:
            left = max(Decimal(applies) - Decimal(line.used), Decimal(0))
        by = {"key": _("key"), "team": _("team"), "": ""}[line.tighter]
        cells = [line.label, _shown(line.own, line.money)]
        if key is not None:
            cells.append(_shown(line.team, line.money))
        rows.append(
            (
                format_html_join("", "<td>{}</td>", ((c,) for c in cells)),
                _shown(applies, line.money),
                f" ({by})" if by and key is not None else "",
                _shown(line.used, line.money) if line.used is not None else _("not counted"),
                _shown(left, line.money),
                _resets(line.resets) if applies is not None else "—",
            )
        )
    heads = [_("limit"), _("this key") if key is not None else _("this team")]
    if key is not None:
        heads.append(_("team: %(name)s") % {"name": team.name} if team is not None else _("team"))
    heads += [_("applies"), _("used"), _("left"), _("resets")]
    return format_html(
        '<table class="sluice-effective"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        format_html_join("", "<th>{}</th>", ((h,) for h in heads)),
        format_html_join(
            "",
            '<tr>{}<td class="sluice-applies"><strong>{}</strong>{}</td>'
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            rows,
        ),
    )


def budget_cell(used: Decimal, own: Decimal | None, team: Decimal | None) -> str:
    """The key list's spend against the budget that applies: "$1.20 / $5 (team)"."""
    line = Line("", own, team, used, True)
    if line.applies is None:
        return money(used)
    by = _("key") if line.tighter == "key" else _("team")
    return _("%(used)s of %(limit)s (%(by)s)") % {
        "used": money(used),
        "limit": money(line.applies),
        "by": by,
    }
