from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _

from settings_app.models import SystemSettings
from settings_app.runtime import forced


@admin.register(SystemSettings)
class SystemSettingsAdmin(admin.ModelAdmin):
    fields = ("client_websockets", "upstream_websockets", "updated_at")
    readonly_fields = ("updated_at",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponseRedirect:
        obj = SystemSettings.load()
        return HttpResponseRedirect(reverse("admin:settings_app_systemsettings_change", args=[obj.pk]))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ):  # type: ignore[no-untyped-def]
        SystemSettings.load()
        for env_name, label in (
            ("SLUICE_FORCE_CLIENT_WEBSOCKETS", _("Accept client WebSockets")),
            ("SLUICE_FORCE_UPSTREAM_WEBSOCKETS", _("Use WebSockets to upstream providers")),
        ):
            value = forced(getattr(settings, env_name))
            if value is not None:
                messages.warning(
                    request,
                    _(
                        "“%(switch)s” is forced %(state)s by the environment variable %(env)s; "
                        "this page cannot change it."
                    )
                    % {"switch": label, "state": _("on") if value else _("off"), "env": env_name},
                )
        return super().change_view(request, object_id, form_url, extra_context)
