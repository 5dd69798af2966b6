from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from providers.models import Provider, Verdict
from providers.widgets import provider_fields
from proxy.admin.provider_test import Report, model_choices, run_test, save_result
from proxy.common.transport import FallbackReason, Transport
from proxy.common.wire import WireError

VERDICT_COLOURS = {Verdict.GREEN: "#2e7d32", Verdict.YELLOW: "#b58900", Verdict.RED: "#c62828"}


class ProviderForm(forms.ModelForm):
    base_url = forms.URLField(
        label=capfirst(_("base URL")),
        max_length=500,
        assume_scheme="https",
        help_text=_("The API root including /v1, e.g. https://api.openai.com/v1."),
    )
    api_key = forms.CharField(
        label=_("API key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Stored encrypted and never shown again. Leave blank to keep the current key."),
    )

    allowed_models, model_redirects, extra_headers = provider_fields().values()

    class Meta:
        model = Provider
        fields = (
            "name",
            "base_url",
            "enabled",
            "priority",
            "weight",
            "allowed_models",
            "model_redirects",
            "websocket_mode",
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "proxy_url",
            "extra_headers",
        )

    def clean(self) -> dict:
        data = super().clean()
        if not self.instance.has_api_key and not data.get("api_key"):
            self.add_error("api_key", _("A new provider needs an API key."))
        return data

    def save(self, commit: bool = True) -> Provider:
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.set_api_key(self.cleaned_data["api_key"])
        if commit:
            provider.save()
        return provider


def verdict_badge(verdict: str) -> str:
    if not verdict:
        return "—"
    return format_html(
        '<strong class="sluice-verdict" style="color:{}">{}</strong>',
        VERDICT_COLOURS[verdict],
        Verdict(verdict).label,
    )


def report_table(data: dict) -> str:
    def ms(value: object) -> str:
        return "—" if value is None else f"{float(value):,.1f} ms"  # type: ignore[arg-type]

    reason = data.get("fallback_reason") or ""
    rows = [
        (gettext("Verdict"), verdict_badge(data.get("verdict", ""))),
        (gettext("Transport"), Transport(data["transport"]).label if data.get("transport") else "—"),
        (gettext("Fallback reason"), FallbackReason(reason).label if reason else "—"),
        (gettext("Handshake"), ms(data.get("handshake_ms"))),
        (gettext("First event"), ms(data.get("first_event_ms"))),
        (gettext("Total"), ms(data.get("total_ms"))),
        (gettext("Events"), data.get("events", 0)),
        (gettext("Model"), data.get("model") or "—"),
        (gettext("Tokens (in / out)"), f"{data.get('input_tokens', 0)} / {data.get('output_tokens', 0)}"),
    ]
    rows += [(gettext("Note"), note) for note in data.get("notes") or []]
    if data.get("error"):
        rows.append((gettext("Error"), data["error"]))
    return format_html(
        '<table class="sluice-report">{}</table>',
        format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
    )


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    change_form_template = "admin/providers/provider/change_form.html"
    list_display = (
        "name",
        "base_url",
        "enabled",
        "priority",
        "weight",
        "websocket_mode",
        "key_set",
        "last_test",
        "last_test_at",
    )
    list_filter = ("enabled", "websocket_mode", "last_test_verdict")
    search_fields = ("name", "base_url")
    readonly_fields = ("key_set", "last_test", "last_test_at", "last_report", "created_at", "updated_at")
    actions = ("test_selected",)
    fieldsets = (
        (None, {"fields": ("name", "base_url", "api_key", "key_set", "enabled")}),
        (_("Routing"), {"fields": ("priority", "weight", "allowed_models", "model_redirects")}),
        (
            _("Connection"),
            {
                "fields": (
                    "websocket_mode",
                    "connect_timeout",
                    "first_byte_timeout",
                    "idle_timeout",
                    "proxy_url",
                    "extra_headers",
                )
            },
        ),
        (_("Provider test"), {"fields": ("last_test", "last_test_at", "last_report")}),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("API key set"), boolean=True)
    def key_set(self, obj: Provider) -> bool:
        return obj.has_api_key

    @admin.display(description=_("last test verdict"), ordering="last_test_verdict")
    def last_test(self, obj: Provider) -> str:
        return verdict_badge(obj.last_test_verdict)

    @admin.display(description=_("last test report"))
    def last_report(self, obj: Provider) -> str:
        return report_table(obj.last_test_report) if obj.last_test_report else "—"

    def get_urls(self) -> list:
        return [
            path(
                "<int:pk>/test/", self.admin_site.admin_view(self.test_view), name="providers_provider_test"
            ),
            *super().get_urls(),
        ]

    def _test(
        self, request: HttpRequest, provider: Provider, model: str | None = None, transport: str = "auto"
    ) -> None:
        try:
            report: Report = async_to_sync(run_test)(provider, transport=transport, model=model)
        except WireError as error:
            self.message_user(
                request,
                gettext("Test of %(name)s: %(message)s") % {"name": provider.name, "message": error.message},
                messages.ERROR,
            )
            return
        save_result(provider, report)
        level = {Verdict.GREEN: messages.SUCCESS, Verdict.YELLOW: messages.WARNING}.get(
            report.verdict, messages.ERROR
        )
        detail = report.error or "; ".join(report.notes) or report.transport_label
        self.message_user(
            request,
            gettext("Test of %(name)s: %(verdict)s (%(detail)s)")
            % {"name": provider.name, "verdict": Verdict(report.verdict).label, "detail": detail},
            level,
        )

    def test_view(self, request: HttpRequest, pk: int) -> HttpResponseRedirect:
        provider = get_object_or_404(Provider, pk=pk)
        if request.method == "POST" and self.has_change_permission(request, provider):
            model = (request.POST.get("model") or "").strip()[:200] or None
            transport = request.POST.get("transport") or "auto"
            if transport not in ("auto", "websocket", "http"):
                transport = "auto"
            self._test(request, provider, model, transport)
        return HttpResponseRedirect(reverse("admin:providers_provider_change", args=[pk]))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> Any:
        provider = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if provider is not None:
            extra["test_models"] = model_choices(provider)
            extra["test_model"] = (provider.last_test_report or {}).get("model") or next(
                iter(extra["test_models"]), ""
            )
        return super().change_view(request, object_id, form_url, extra)

    @admin.action(description=_("Test the selected providers"))
    def test_selected(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            self._test(request, provider)
