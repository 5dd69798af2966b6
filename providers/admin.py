from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from providers.models import Provider


class ProviderForm(forms.ModelForm):
    api_key = forms.CharField(
        label=_("API key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Stored encrypted and never shown again. Leave blank to keep the current key."),
    )

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


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "base_url", "enabled", "priority", "weight", "websocket_mode", "key_set")
    list_filter = ("enabled", "websocket_mode")
    search_fields = ("name", "base_url")
    readonly_fields = ("key_set", "created_at", "updated_at")
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
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("API key set"), boolean=True)
    def key_set(self, obj: Provider) -> bool:
        return obj.has_api_key
