"""My keys: list, create (shown once), revoke, rotate. Every lookup is by the person (or, to revoke, the
teams they lead): someone else's key id is "not found"."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from portal import policy, queries, ratelimit, setup
from portal.forms import KeyForm, RotateForm
from portal.views import signed_in
from proxy.models import ApiKey


def status_of(key: ApiKey, now: dt.datetime) -> str:
    if not key.enabled:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def _listing(request: HttpRequest, form: KeyForm, status: int = 200) -> HttpResponse:
    now = timezone.now()
    keys = list(queries.own_keys(request.user))
    for key in keys:
        key.status = status_of(key, now)
        key.budget = queries.budget_left(f"k{key.pk}", key) if key.status == "active" else None
    context = {"keys": keys, "form": form, "rotate": RotateForm(), "section": "keys", "now": now}
    return render(request, "portal/keys.html", context, status=status)


@signed_in
def keys(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _listing(request, KeyForm(request.user))
    form = KeyForm(request.user, request.POST)
    if not form.is_valid():
        return _listing(request, form, status=400)
    if not ratelimit.allow(request.user.pk):
        form.add_error(None, _("You made too many keys in the last hour; try again later."))
        return _listing(request, form, status=429)
    data = form.cleaned_data
    team = data["team"]
    days = data["days"] or policy.max_days(team)
    key = ApiKey(
        name=data["name"],
        owner=request.user,
        team=team,
        expires_at=timezone.now() + dt.timedelta(days=days),
        allowed_models=data["models"],
        **{name: data[name] for name in policy.LIMIT_FIELDS},
    )
    secret = key.generate()
    key.save()
    return shown_once(request, key, secret)


def shown_once(request: HttpRequest, key: ApiKey, secret: str, old: ApiKey | None = None) -> HttpResponse:
    """The only page that ever shows the key; not kept by the browser's cache."""
    context = {
        "key": key,
        "secret": secret,
        "old": old,
        "section": "keys",
        **setup.snippets(request, key, secret),
    }
    response = render(request, "portal/created.html", context)
    response["Cache-Control"] = "no-store"
    return response


def _revocable(request: HttpRequest, key_id: int) -> ApiKey:
    """The person's own key, or a key of a team they lead; anything else is not found."""
    scope = Q(owner=request.user) | Q(team_id__in=queries.led_team_ids(request.user))
    return get_object_or_404(ApiKey.objects.filter(scope), pk=key_id)


@signed_in
@require_POST
def revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = _revocable(request, key_id)
    if key.enabled:
        key.enabled = False
        key.save(update_fields=["enabled"])
    messages.success(request, _("The key “%(name)s” is revoked.") % {"name": key.name})
    back = request.POST.get("back", "")
    return redirect(back if back.startswith("/portal/") and not back.startswith("//") else "portal:keys")


@signed_in
@require_POST
def rotate(request: HttpRequest, key_id: int) -> HttpResponse:
    old = get_object_or_404(ApiKey.objects.select_related("team"), pk=key_id, owner=request.user)
    form = RotateForm(request.POST)
    if not form.is_valid() or not old.enabled or old.is_expired:
        messages.error(request, _("Only a working key can be rotated, with at most 24 hours of grace."))
        return redirect("portal:keys")
    if not ratelimit.allow(request.user.pk):
        messages.error(request, _("You made too many keys in the last hour; try again later."))
        return redirect("portal:keys")
    now = timezone.now()
    with transaction.atomic():
        new = _successor(old, now)
        secret = new.generate()
        new.save()
        grace = form.cleaned_data["grace_hours"]
        if grace == 0:
            old.enabled = False
        else:
            ends = now + dt.timedelta(hours=grace)
            old.expires_at = ends if old.expires_at is None else min(old.expires_at, ends)
        old.save(update_fields=["enabled", "expires_at"])
    return shown_once(request, new, secret, old)


def _successor(old: ApiKey, now: dt.datetime) -> ApiKey:
    """The new key of a rotation: the old one's name, team and limits, and a fresh lifetime of the same
    length (at most the team's longest)."""
    longest = dt.timedelta(days=policy.max_days(old.team) if old.team else policy.DEFAULT_KEY_DAYS)
    lifetime = min(old.expires_at - old.created_at, longest) if old.expires_at else longest
    fields: dict[str, Any] = {name: getattr(old, name) for name in policy.LIMIT_FIELDS}
    return ApiKey(
        name=old.name,
        owner=old.owner,
        team=old.team,
        expires_at=now + lifetime,
        allowed_models=list(old.allowed_models),
        **fields,
    )
