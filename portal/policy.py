"""What a person may make for themselves in the portal: a team's self-service policy, applied to a key.

A key made here belongs to its maker, is of one of their teams, always expires (at most the team's
longest lifetime, 90 days when the team sets none) and may carry limits and a model list that are
narrower than the team's, never wider. ``check`` is a pure function of the team, the request and the
number of keys the person already has in the team, so its rules are tested as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.utils.translation import gettext as _
from django.utils.translation import ngettext

DEFAULT_KEY_DAYS = 90
LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "sockets", "daily_budget", "monthly_budget")


@dataclass
class KeyRequest:
    """What the person asked for; None or empty: no narrower limit than the team's."""

    days: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    sockets: int | None = None
    daily_budget: Decimal | None = None
    monthly_budget: Decimal | None = None
    models: list[str] = field(default_factory=list)


def max_days(team: Any) -> int:
    return team.key_max_days or DEFAULT_KEY_DAYS


def check(team: Any, request: KeyRequest, keys_held: int) -> dict[str, str]:
    """Errors by form field ("" for the whole form); empty when the team's policy allows the key."""
    errors: dict[str, str] = {}
    if not team.self_service:
        errors[""] = _("The team “%(team)s” does not let its members make their own keys.") % {
            "team": team.name
        }
        return errors
    if team.max_keys_per_user is not None and keys_held >= team.max_keys_per_user:
        errors[""] = ngettext(
            "You already have %(count)d working key in “%(team)s”, its most per person.",
            "You already have %(count)d working keys in “%(team)s”, its most per person.",
            keys_held,
        ) % {"count": keys_held, "team": team.name}
    longest = max_days(team)
    if request.days is not None and not 1 <= request.days <= longest:
        errors["days"] = _("A key of this team lives from 1 to %(days)d days.") % {"days": longest}
    for name in LIMIT_FIELDS:
        wanted, allowed = getattr(request, name), getattr(team, name)
        if wanted is not None and allowed is not None and wanted > allowed:
            errors[name] = _("At most %(limit)s: the team's own limit.") % {"limit": allowed}
    if request.models and team.allowed_models:
        wider = sorted(set(request.models) - set(team.allowed_models))
        if wider:
            errors["models"] = _("Not allowed for the team: %(models)s.") % {"models": ", ".join(wider)}
    return errors
