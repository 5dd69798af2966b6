from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SettingsAppConfig(AppConfig):
    name = "settings_app"
    verbose_name = _("Settings")

    def ready(self) -> None:
        # Imported here: the models and whatever loads them only once Django has loaded the apps.
        from django.db.models.signals import post_delete, post_save

        from settings_app.models import SystemSettings
        from settings_app.runtime import bump_version

        def changed(**kwargs: object) -> None:
            bump_version("settings")

        post_save.connect(changed, sender=SystemSettings, weak=False, dispatch_uid="settings-changed")
        post_delete.connect(changed, sender=SystemSettings, weak=False, dispatch_uid="settings-deleted")
