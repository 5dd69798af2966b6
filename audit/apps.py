from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = _("Audit and alerts")

    def ready(self) -> None:
        # Imported here: the modules use the models, which exist only once the registry is ready.
        from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed

        from audit import alerts, entry, events, signals

        signals.connect()
        events.connect()
        entry.wrap_commands()
        user_logged_in.connect(entry.signed_in, weak=False, dispatch_uid="audit:sign-in")
        user_logged_out.connect(entry.signed_out, weak=False, dispatch_uid="audit:sign-out")
        user_login_failed.connect(entry.sign_in_failed, weak=False, dispatch_uid="audit:sign-in-failed")
        alerts.check_env_urls()
        _history_links()


def _history_links() -> None:
    """Every audited model's admin "History" opens its audit rows (the admin registry is complete here:
    the admin app, listed before this one, discovered every admin module in its own ready())."""
    # Imported here, like ready()'s: the admin module needs the models loaded.
    from django.apps import apps
    from django.contrib import admin

    from audit.admin import history_link
    from audit.signals import AUDITED

    for label in AUDITED:
        model_admin = admin.site._registry.get(apps.get_model(label))
        if model_admin is not None:
            history_link(model_admin)
