"""Model changes into the audit log: every model an operator configures, whatever code path saves it."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any

from django.apps import apps
from django.db import models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.utils import timezone

from audit.chain import record
from audit.models import Action

# What an operator configures: "app_label.Model". A model added to the project is either here or in
# NOT_AUDITED (tests/test_audit.py walks every model and fails on one that is in neither).
AUDITED = (
    "providers.Provider",
    "proxy.ApiKey",
    "proxy.Team",
    "proxy.ModelPrice",
    "identity.Membership",
    "identity.ScimGroup",
    "identity.BreakGlass",
    "auth.User",
    "auth.Group",
    "settings_app.SystemSettings",
    "audit.AlertChannel",
    "audit.TeamAlertPolicy",
)
# Written by the gateway itself (logs, sessions, bookkeeping), or the audit log's own rows.
NOT_AUDITED = (
    "proxy.RequestLog",
    "proxy.UsageHour",
    "proxy.UsageDay",
    "proxy.LatencyDay",
    "proxy.Usage",
    "admin.LogEntry",
    "auth.Permission",
    "contenttypes.ContentType",
    "sessions.Session",
    "audit.AuditEvent",
    "audit.AuditChain",
    "audit.AlertSent",
    "audit.AlertDelivery",
    # Sign-in bookkeeping: the sign-ins themselves, failures included, are audit rows through Django's
    # signals, and what they change of a person (auth.User, identity.Membership) is audited.
    "identity.OidcSubject",
    "identity.ScimUser",
    "axes.AccessAttempt",
    "axes.AccessAttemptExpiration",
    "axes.AccessFailureLog",
    "axes.AccessLog",
)

# Values never written to the log, only that they changed: secrets, key hashes, passwords, channel URLs,
# and upstream headers (they often carry credentials).
SECRET = re.compile(r"password|secret|token|hash|encrypted|api_key|extra_headers", re.IGNORECASE)
CHANGED = "changed"
# Bookkeeping the gateway updates by itself: a change of these alone is not a change anyone made.
IGNORED = {"updated_at", "created_at", "last_login", "last_used_at", "last_test_at", "last_test_verdict"}
IGNORED_PREFIX = ("last_test_",)


def _fields(model: type[models.Model]) -> list[models.Field]:
    return [
        f
        for f in model._meta.concrete_fields
        if f.name not in IGNORED and not f.name.startswith(IGNORED_PREFIX) and not f.primary_key
    ]


def _plain(field: models.Field, value: Any) -> Any:
    """A JSON value that compares equal however the instance got it (2 set in code, 2.0000 read back)."""
    if value is None:
        return None
    if isinstance(field, models.DecimalField):
        return format(decimal.Decimal(value).quantize(decimal.Decimal(10) ** -field.decimal_places), "f")
    if isinstance(value, dt.datetime | dt.date | dt.time | decimal.Decimal):
        return str(value)
    return value


def snapshot(instance: models.Model) -> dict[str, Any]:
    return {f.attname: _plain(f, getattr(instance, f.attname)) for f in _fields(type(instance))}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name, new in after.items():
        old = before.get(name)
        if old != new:
            changes[name] = CHANGED if SECRET.search(name) else [old, new]
    return changes


def _label(instance: models.Model) -> str:
    try:
        return str(instance)
    except Exception:  # noqa: BLE001 - a label that cannot be made must not stop the log
        return ""


def _type(model: type[models.Model]) -> str:
    return model._meta.label


def before_save(sender: type[models.Model], instance: models.Model, raw: bool = False, **_: Any) -> None:
    if raw or instance.pk is None:
        instance._audit_before = None  # type: ignore[attr-defined]
        return
    old = sender._default_manager.filter(pk=instance.pk).first()
    instance._audit_before = snapshot(old) if old is not None else None  # type: ignore[attr-defined]


def after_save(
    sender: type[models.Model],
    instance: models.Model,
    created: bool,
    raw: bool = False,
    update_fields: frozenset[str] | None = None,
    **_: Any,
) -> None:
    if raw:
        return
    before = getattr(instance, "_audit_before", None)
    after = snapshot(instance)
    if update_fields is not None and before is not None:  # only what was written, not what was only set
        written = {sender._meta.get_field(name).attname for name in update_fields}
        after = {k: v if k in written else before.get(k) for k, v in after.items()}
    if created or before is None:
        changes = diff({}, {k: v for k, v in after.items() if v not in (None, "", [], {})})
        action = Action.CREATE
    else:
        changes = diff(before, after)
        if not changes:
            return
        action = _revocation(before, after) or Action.UPDATE
    instance._audit_before = after  # type: ignore[attr-defined]  # a second save diffs from here
    record(
        action,
        object_type=_type(sender),
        object_id=instance.pk,
        object_label=_label(instance),
        changes=changes,
    )


def _revocation(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """A key switched off, or given an expiry already past, is revoked: its own action in the log."""
    if "hashed_key" not in after:
        return None
    if before.get("enabled") and not after.get("enabled"):
        return Action.REVOKE
    expires = after.get("expires_at")
    if expires and expires != before.get("expires_at"):
        when = dt.datetime.fromisoformat(str(expires))
        if when <= timezone.now():
            return Action.REVOKE
    return None


def after_delete(sender: type[models.Model], instance: models.Model, **_: Any) -> None:
    before = snapshot(instance)
    record(
        Action.DELETE,
        object_type=_type(sender),
        object_id=instance.pk,
        object_label=_label(instance),
        changes=diff(before, dict.fromkeys(before)),
    )


def m2m(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    model: type[models.Model],
    pk_set: set[Any] | None,
    reverse: bool,
    **_: Any,
) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    field = next(
        (f.name for f in type(instance)._meta.many_to_many if f.remote_field.through is sender),
        model._meta.model_name,
    )
    names = sorted(_label(o) for o in model._default_manager.filter(pk__in=pk_set or ()))
    verb = {"post_add": "added", "post_remove": "removed", "post_clear": "cleared"}[action]
    record(
        Action.UPDATE,
        object_type=_type(type(instance)),
        object_id=instance.pk,
        object_label=_label(instance),
        changes={field: {verb: names}},
    )


def connect() -> None:
    for label in AUDITED:
        model = apps.get_model(label)
        uid = f"audit:{label}"
        pre_save.connect(before_save, sender=model, weak=False, dispatch_uid=uid)
        post_save.connect(after_save, sender=model, weak=False, dispatch_uid=uid)
        post_delete.connect(after_delete, sender=model, weak=False, dispatch_uid=uid)
        for field in model._meta.many_to_many:
            through = field.remote_field.through
            m2m_changed.connect(m2m, sender=through, weak=False, dispatch_uid=f"{uid}:{field.name}")
