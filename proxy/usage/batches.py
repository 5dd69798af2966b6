"""Deleting many old rows without holding their table: the one loop of the retention commands (the
request log's ``prunelogs``, the audit log's ``pruneaudit``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

BATCH = 5000


def delete_in_batches(
    rows: QuerySet,
    batch: int = BATCH,
    before_delete: Callable[[list[Any]], None] | None = None,
    pause: float = 0.01,
) -> int:
    """Delete ``rows``, the first ``batch`` of them in the queryset's order per short transaction, so that
    writers to the table never wait long; return how many went. ``before_delete`` runs in each batch's
    transaction with the batch's primary keys (in that order) before they go: what must change with
    them changes with them, or not at all."""
    deleted = 0
    while True:
        with transaction.atomic():
            keys = list(rows.values_list("pk", flat=True)[:batch])
            if not keys:
                return deleted
            if before_delete is not None:
                before_delete(keys)
            rows.model._base_manager.filter(pk__in=keys).delete()
        deleted += len(keys)
        time.sleep(pause)  # let writers in between batches
