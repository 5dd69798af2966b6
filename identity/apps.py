from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class IdentityConfig(AppConfig):
    name = "identity"
    verbose_name = _("Identity")

    def ready(self) -> None:
        # Connected here: the signal handlers need the models, which are not ready at import time.
        from identity import deprovision

        deprovision.connect()
