from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ProvidersConfig(AppConfig):
    name = "providers"
    verbose_name = _("Routing")

    def ready(self) -> None:
        # Imported here: the models and whatever loads them only once Django has loaded the apps.
        from django.db.models.signals import post_delete, post_save

        from providers.models import Provider
        from settings_app.runtime import bump_version

        def changed(**kwargs: object) -> None:
            bump_version("providers")

        post_save.connect(changed, sender=Provider, weak=False, dispatch_uid="provider-changed")
        post_delete.connect(changed, sender=Provider, weak=False, dispatch_uid="provider-deleted")
