"""Writing and checking the audit chain: ``record`` is the one function that adds rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.context import Actor, current
from audit.models import FIELDS, AuditChain, AuditEvent
from proxy.usage.batches import BATCH, delete_in_batches

HASHED = (*FIELDS, "prev_hash")


def canonical(values: dict[str, Any]) -> str:
    """The row as the hash sees it: sorted keys, no spaces, times in UTC ISO form."""
    data = {}
    for name in HASHED:
        value = values[name]
        if isinstance(value, dt.datetime):
            value = value.astimezone(dt.UTC).isoformat()
        data[name] = value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256((values["prev_hash"] + canonical(values)).encode()).hexdigest()


def _head() -> AuditChain:
    """The chain's head row, locked until the transaction ends (PostgreSQL: a row lock every writer waits
    for; SQLite: its transactions already take the database's write lock when they begin)."""
    AuditChain.objects.get_or_create(pk=1)
    return AuditChain.objects.select_for_update().get(pk=1)


def record(
    action: str,
    *,
    object_type: str = "",
    object_id: object = "",
    object_label: str = "",
    changes: dict[str, Any] | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """Append one row to the chain as ``actor`` (default: whoever is acting now)."""
    who = actor or current()
    with transaction.atomic():
        head = _head()
        values: dict[str, Any] = {
            "seq": head.head_seq + 1,
            "time": timezone.now(),
            "actor": who.name[:200],
            "actor_user_id": who.user_id,
            "source": who.source[:20],
            "action": action,
            "object_type": object_type[:100],
            "object_id": str(object_id)[:64],
            "object_label": str(object_label)[:300],
            "changes": json.loads(json.dumps(changes or {}, default=str)),
            "client_ip": who.client_ip[:64],
            "request_id": who.request_id[:64],
            "prev_hash": head.head_hash,
        }
        values["hash"] = row_hash(values)
        event = AuditEvent.objects.create(**values)
        head.head_seq, head.head_hash = values["seq"], values["hash"]
        head.save(update_fields=["head_seq", "head_hash"])
    return event


@dataclass
class Break:
    """Where the chain stops being what was written: ``seq`` names the first edited or removed row."""

    seq: int
    kind: str  # "edited", "removed", "removed-last"


def verify() -> Break | None:
    head = AuditChain.objects.filter(pk=1).first()
    expected_seq = (head.anchor_seq if head else 0) + 1
    prev = head.anchor_hash if head else ""
    fields = ["hash", *HASHED]
    for row in AuditEvent.objects.order_by("seq").values(*fields).iterator(chunk_size=2000):
        if row["seq"] != expected_seq or row["prev_hash"] != prev:
            return Break(expected_seq, "removed")
        if row_hash(row) != row["hash"]:
            return Break(row["seq"], "edited")
        prev, expected_seq = row["hash"], row["seq"] + 1
    if head is not None and (head.head_seq >= expected_seq or head.head_hash != prev):
        return Break(expected_seq, "removed-last")
    return None


def prune(before: dt.datetime, batch: int = BATCH) -> int:
    """Delete rows older than ``before``, a batch per short transaction (appending waits only for one),
    in sequence order only, so the chain after the anchor stays whole: each batch leaves its last row's
    sequence and hash as the anchor the check starts from."""
    last = AuditEvent.objects.filter(time__lt=before).order_by("-seq").values_list("seq", flat=True).first()
    if last is None:
        return 0

    def anchor(keys: list[Any]) -> None:
        head = _head()
        head.anchor_seq, head.anchor_hash = AuditEvent.objects.values_list("seq", "hash").get(pk=keys[-1])
        head.save(update_fields=["anchor_seq", "anchor_hash"])

    return delete_in_batches(AuditEvent.objects.filter(seq__lte=last).order_by("seq"), batch, anchor)
