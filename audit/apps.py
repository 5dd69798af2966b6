from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = _("Audit and alerts")

    def ready(self) -> None:
        # Imported here: the modules use the models, which exist only once the registry is ready.
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from audit import entry, signals

        signals.connect()
        entry.wrap_commands()
        user_logged_in.connect(entry.signed_in, weak=False, dispatch_uid="audit:sign-in")
        user_login_failed.connect(entry.sign_in_failed, weak=False, dispatch_uid="audit:sign-in-failed")
