from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from proxy.models import ApiKey, ModelPrice, RequestLog


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "owner", "enabled", "expires_at", "created_at", "last_used_at")
    list_filter = ("enabled",)
    search_fields = ("name", "prefix", "owner__username")
    fields = ("name", "owner", "enabled", "expires_at", "prefix", "created_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if not change:
            request._sluice_new_key = obj.generate()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the new secret once, on a page of its own; it is stored only as a hash."""
        raw = getattr(request, "_sluice_new_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": obj,
            "secret": raw,
            "title": _("New API key"),
        }
        response = TemplateResponse(request, "admin/proxy/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_million", "cached_input_per_million", "output_per_million")
    search_fields = ("model",)


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "api_key",
        "provider",
        "requested_model",
        "status",
        "tokens",
        "cost",
        "ttfe",
        "duration",
        "client_transport",
        "upstream_transport",
        "fallback_reason",
    )
    list_filter = (
        "status",
        "client_transport",
        "upstream_transport",
        "fallback_reason",
        ("provider", admin.RelatedOnlyFieldListFilter),
        ("api_key", admin.RelatedOnlyFieldListFilter),
        "requested_model",
        "endpoint",
    )
    search_fields = ("response_id", "requested_model", "upstream_model", "error_code", "session_id")
    date_hierarchy = "created_at"
    list_select_related = ("api_key", "provider")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description=_("tokens (in / cached / out)"))
    def tokens(self, obj: RequestLog) -> str:
        return f"{obj.input_tokens:,} / {obj.cached_input_tokens:,} / {obj.output_tokens:,}"

    @admin.display(description=_("first event"), ordering="time_to_first_event_ms")
    def ttfe(self, obj: RequestLog) -> str:
        return "—" if obj.time_to_first_event_ms is None else f"{obj.time_to_first_event_ms:,.0f} ms"

    @admin.display(description=_("duration"), ordering="duration_ms")
    def duration(self, obj: RequestLog) -> str:
        return f"{obj.duration_ms:,.0f} ms"
