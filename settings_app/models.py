from django.db import models
from django.utils.translation import gettext_lazy as _


class SystemSettings(models.Model):
    """The gateway's runtime switches: one row, edited in the admin, read through ``settings_app.runtime``."""

    client_websockets = models.BooleanField(
        _("accept client WebSockets"),
        default=True,
        help_text=_(
            "Serve the Responses API WebSocket mode on /v1/responses. When off, upgrades are refused with "
            "HTTP 426 so clients such as Codex fall back to HTTP at once; sockets already open stay open."
        ),
    )
    upstream_websockets = models.BooleanField(
        _("use WebSockets to upstream providers"),
        default=True,
        help_text=_(
            "Speak WebSocket mode to providers that allow it, one upstream socket per client socket. When "
            "off, every turn goes to providers over HTTP and the gateway serves continuations itself."
        ),
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("system settings")
        verbose_name_plural = _("system settings")

    def __str__(self) -> str:
        return str(_("System settings"))

    def save(self, *args: object, **kwargs: object) -> None:
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "SystemSettings":
        obj, _created = cls.objects.get_or_create(pk=1)
        return obj
