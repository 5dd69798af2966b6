"""A person who is deactivated (through SCIM, the admin or anything else that saves the user) loses every
key at once: each key is disabled and saved, so the gateway's revocation closes its live sockets on every
node and refuses its next request.

Reactivating does not bring the keys back: they stay disabled until someone enables them on purpose (in
the admin, or a new key in the portal). A key that was disabled before stays as it was either way.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save

from proxy.models import ApiKey

log = logging.getLogger("sluice.identity")


def _remember_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is None:
        instance._sluice_was_active = None
        return
    instance._sluice_was_active = (
        sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()
    )


def _disable_keys_of_deactivated(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if created or instance.is_active or not getattr(instance, "_sluice_was_active", False):
        return
    keys = list(ApiKey.objects.filter(owner=instance, enabled=True))
    for key in keys:
        key.enabled = False
        key.save(update_fields=["enabled"])  # through the ORM: the revocation broadcast fires per key
    log.info("user %s deactivated: %s key(s) disabled", instance.pk, len(keys))


def connect() -> None:
    User = get_user_model()
    pre_save.connect(_remember_active, sender=User, weak=False, dispatch_uid="identity-user-was-active")
    post_save.connect(
        _disable_keys_of_deactivated, sender=User, weak=False, dispatch_uid="identity-deactivated-keys"
    )
