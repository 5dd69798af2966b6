from typing import Any

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = _("Gateway")

    def ready(self) -> None:
        # Imported here: the models and whatever loads them only once Django has loaded the apps.
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from proxy.usage import tracing

        tracing.configure()  # every process, uvicorn's workers included: the exporter's thread is its own

        # The models, and what acts on their changes, as above: only once the apps are loaded.
        from proxy.governance.revocation import revoke_everywhere
        from proxy.models import ApiKey, ModelPrice, RequestLog, Team
        from proxy.usage import rollup
        from proxy.usage.logwriter import COLUMNS
        from settings_app.runtime import bump_version

        def key_changed(instance: ApiKey, **kwargs: object) -> None:
            bump_version("api-keys")
            if kwargs.get("signal") is post_delete or not instance.enabled or instance.is_expired:
                revoke_everywhere(instance.pk)

        post_save.connect(key_changed, sender=ApiKey, weak=False, dispatch_uid="key-changed")
        post_delete.connect(key_changed, sender=ApiKey, weak=False, dispatch_uid="key-deleted")

        def team_changed(instance: Team, **kwargs: object) -> None:
            bump_version("api-keys")  # the keys' policies carry their team's limits
            if kwargs.get("signal") is post_save and not instance.enabled:
                for key_id in instance.keys.values_list("pk", flat=True):
                    revoke_everywhere(key_id)

        post_save.connect(team_changed, sender=Team, weak=False, dispatch_uid="team-changed")
        post_delete.connect(team_changed, sender=Team, weak=False, dispatch_uid="team-deleted")

        def owner_changed(instance: Any, **kwargs: Any) -> None:
            """A person deactivated (the admin, a command, SCIM) stops being served on every node."""
            fields = kwargs.get("update_fields")
            if kwargs.get("created") or (fields is not None and "is_active" not in fields):
                return  # a sign-in saves last_login only: the key table stays as it is
            bump_version("api-keys")  # the keys' snapshot carries their owner's active state
            if not instance.is_active:
                for key_id in ApiKey.objects.filter(owner=instance).values_list("pk", flat=True):
                    revoke_everywhere(key_id)

        post_save.connect(owner_changed, sender=get_user_model(), weak=False, dispatch_uid="owner-changed")

        def price_changed(**kwargs: object) -> None:
            bump_version("prices")

        post_save.connect(price_changed, sender=ModelPrice, weak=False, dispatch_uid="price-changed")
        post_delete.connect(price_changed, sender=ModelPrice, weak=False, dispatch_uid="price-deleted")

        def log_saved(instance: RequestLog, created: bool, raw: bool = False, **kwargs: object) -> None:
            # A row saved one by one (an import, a fixture) joins the hourly roll-up as the writer's do.
            if created and not raw:
                rollup.add([tuple(getattr(instance, c) for c in COLUMNS)], COLUMNS)

        post_save.connect(log_saved, sender=RequestLog, weak=False, dispatch_uid="log-rolled-up")
