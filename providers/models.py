from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from providers import crypto


class WebSocketMode(models.TextChoices):
    AUTO = "auto", _("Auto: WebSocket, falling back to HTTP")
    ALWAYS = "always", _("Always WebSocket")
    NEVER = "never", _("Never: HTTP only")


class Verdict(models.TextChoices):
    GREEN = "green", _("Green: works")
    YELLOW = "yellow", _("Yellow: works, degraded")
    RED = "red", _("Red: failed")


def _validate_str_dict(value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError(_("Enter a JSON object whose keys and values are strings."))


class Provider(models.Model):
    """An upstream that speaks the OpenAI Responses API."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    base_url = models.URLField(
        _("base URL"),
        max_length=500,
        help_text=_("The API root including /v1, e.g. https://api.openai.com/v1."),
    )
    api_key_encrypted = models.TextField(_("API key (encrypted)"), blank=True, editable=False)
    enabled = models.BooleanField(_("enabled"), default=True)
    priority = models.IntegerField(_("priority"), default=100, help_text=_("Lower numbers are tried first."))
    weight = models.PositiveIntegerField(
        _("weight"), default=1, help_text=_("Share of traffic among enabled providers of equal priority.")
    )
    allowed_models = models.JSONField(
        _("allowed models"),
        default=list,
        blank=True,
        help_text=_('A JSON list of model names this provider serves, e.g. ["gpt-5.5"]. Empty: all models.'),
    )
    model_redirects = models.JSONField(
        _("model redirects"),
        default=dict,
        blank=True,
        validators=[_validate_str_dict],
        help_text=_(
            'A JSON object mapping a requested model to the upstream model, e.g. {"gpt-5.5": "gpt-5.5-pro"}.'
        ),
    )
    extra_headers = models.JSONField(
        _("extra headers"),
        default=dict,
        blank=True,
        validators=[_validate_str_dict],
        help_text=_("A JSON object of HTTP headers added to every upstream request."),
    )
    connect_timeout = models.FloatField(_("connect timeout (s)"), default=10.0)
    first_byte_timeout = models.FloatField(
        _("first byte timeout (s)"),
        default=120.0,
        help_text=_("How long to wait for the upstream's first event."),
    )
    idle_timeout = models.FloatField(
        _("idle timeout (s)"),
        default=300.0,
        help_text=_("How long the upstream may stay silent between events."),
    )
    proxy_url = models.CharField(
        _("outbound proxy URL"), max_length=500, blank=True, help_text=_("Optional, e.g. http://proxy:3128.")
    )
    websocket_mode = models.CharField(
        _("WebSocket mode"), max_length=10, choices=WebSocketMode.choices, default=WebSocketMode.AUTO
    )
    last_test_at = models.DateTimeField(_("last test"), null=True, blank=True, editable=False)
    last_test_verdict = models.CharField(
        _("last test verdict"), max_length=10, choices=Verdict.choices, blank=True, editable=False
    )
    last_test_report = models.JSONField(_("last test report"), default=dict, blank=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["priority", "name"]
        verbose_name = _("provider")
        verbose_name_plural = _("providers")

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.allowed_models, list) or not all(
            isinstance(m, str) for m in self.allowed_models
        ):
            raise ValidationError({"allowed_models": _("Enter a JSON list of model names.")})

    @property
    def api_key(self) -> str:
        return crypto.decrypt(self.api_key_encrypted)

    def set_api_key(self, raw: str) -> None:
        self.api_key_encrypted = crypto.encrypt(raw) if raw else ""

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)
