import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from proxy.common.labels import Endpoint, error_label
from proxy.common.transport import FallbackReason, Transport

KEY_PREFIX = "sk-sluice-"


def hash_key(raw: str) -> str:
    # Keys are 256-bit random tokens: a fast hash is enough and keeps authentication off the hot path.
    return hashlib.sha256(raw.encode()).hexdigest()


def _validate_model_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError(_("Enter a JSON list of model names."))


class Limits(models.Model):
    """Limits a key or a team may carry; blank means no limit. A key's and its team's limits both apply."""

    rpm = models.PositiveIntegerField(_("requests per minute"), null=True, blank=True)
    tpm = models.PositiveIntegerField(
        _("tokens per minute"),
        null=True,
        blank=True,
        help_text=_("Input and output tokens of finished turns."),
    )
    concurrency = models.PositiveIntegerField(_("turns in flight"), null=True, blank=True)
    sockets = models.PositiveIntegerField(_("open WebSocket connections"), null=True, blank=True)
    daily_budget = models.DecimalField(
        _("daily budget (USD)"),
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text=_("Spend per UTC day."),
    )
    monthly_budget = models.DecimalField(
        _("monthly budget (USD)"),
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text=_("Spend per calendar month (UTC)."),
    )
    allowed_models = models.JSONField(
        _("allowed models"),
        default=list,
        blank=True,
        validators=[_validate_model_list],
        help_text=_('A JSON list of model names, e.g. ["gpt-5.5"]. Empty: every model the providers serve.'),
    )

    class Meta:
        abstract = True


class Team(Limits):
    name = models.CharField(_("name"), max_length=100, unique=True)
    enabled = models.BooleanField(
        _("enabled"), default=True, help_text=_("A disabled team refuses every request of its keys.")
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    # People: the identity provider's groups whose members belong to the team (and lead it).
    idp_groups = models.JSONField(
        _("identity provider groups"),
        default=list,
        blank=True,
        help_text=_("Members of these groups (a JSON list of names) belong to the team."),
    )
    lead_idp_groups = models.JSONField(
        _("lead groups"),
        default=list,
        blank=True,
        help_text=_("Members of these groups (a JSON list of names) lead the team."),
    )
    # What members may do for themselves in the portal.
    self_service = models.BooleanField(
        _("self-service keys"), default=True, help_text=_("Members may create their own keys in the portal.")
    )
    max_keys_per_user = models.PositiveIntegerField(_("most keys per person"), null=True, blank=True)
    # Portal keys always expire: 0 is no lifetime (nor "no maximum"), refused here and by the database.
    key_max_days = models.PositiveIntegerField(
        _("longest key lifetime (days)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Keys made in the portal always expire; blank: 90 days."),
    )

    class Meta:
        ordering = ["name"]
        verbose_name = _("team")
        verbose_name_plural = _("teams")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(key_max_days__isnull=True) | models.Q(key_max_days__gte=1),
                name="team_key_max_days_at_least_1",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ApiKey(Limits):
    name = models.CharField(_("name"), max_length=100)
    team = models.ForeignKey(
        Team,
        verbose_name=_("team"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="keys",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        on_delete=models.CASCADE,
        related_name="sluice_keys",
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    prefix = models.CharField(_("prefix"), max_length=20, editable=False)
    hashed_key = models.CharField(_("hashed key"), max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def generate(self) -> str:
        """Give the key a new secret and return it: the only time it exists in clear."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw[: len(KEY_PREFIX) + 4]
        self.hashed_key = hash_key(raw)
        return raw

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class ModelPrice(models.Model):
    model = models.CharField(
        _("model"),
        max_length=200,
        unique=True,
        help_text=_("An upstream model name; it also prices dated variants that start with it."),
    )
    input_per_million = models.DecimalField(_("input (USD / 1M tokens)"), max_digits=12, decimal_places=4)
    cached_input_per_million = models.DecimalField(
        _("cached input (USD / 1M tokens)"), max_digits=12, decimal_places=4, default=Decimal(0)
    )
    output_per_million = models.DecimalField(_("output (USD / 1M tokens)"), max_digits=12, decimal_places=4)

    class Meta:
        ordering = ["model"]
        verbose_name = _("model price")
        verbose_name_plural = _("model prices")

    def __str__(self) -> str:
        return self.model

    def rates(self) -> tuple[float, float, float]:
        """USD per token (input, cached input, output): what spend accounting multiplies at turn end."""
        return (
            float(self.input_per_million) / 1e6,
            float(self.cached_input_per_million) / 1e6,
            float(self.output_per_million) / 1e6,
        )

    def cost(self, input_tokens: int, cached_tokens: int, output_tokens: int) -> Decimal:
        cached = min(cached_tokens, input_tokens)
        total = (
            (input_tokens - cached) * self.input_per_million
            + cached * self.cached_input_per_million
            + output_tokens * self.output_per_million
        )
        return (total / Decimal(1_000_000)).quantize(Decimal("0.00000001"))


class ClientTransport(models.TextChoices):
    HTTP = "http", _("HTTP")
    WEBSOCKET = "websocket", _("WebSocket")


class RequestLog(models.Model):
    """One row per turn: an HTTP request, or one response.create on a WebSocket."""

    created_at = models.DateTimeField(_("time"), default=timezone.now, db_index=True)
    # The log is the record of spend: a key, team or person with rows is deactivated, never deleted (the
    # database refuses; the admin offers deactivation instead).
    api_key = models.ForeignKey(ApiKey, verbose_name=_("API key"), null=True, on_delete=models.PROTECT)
    team = models.ForeignKey(Team, verbose_name=_("team"), null=True, blank=True, on_delete=models.PROTECT)
    provider = models.ForeignKey(
        "providers.Provider", verbose_name=_("provider"), null=True, blank=True, on_delete=models.SET_NULL
    )
    endpoint = models.CharField(_("endpoint"), max_length=64, choices=Endpoint.choices, default="responses")
    requested_model = models.CharField(_("requested model"), max_length=200, blank=True)
    # The model the turn counts under (``TurnRecord.model``): for a turn refused before any upstream, the
    # one it asked for.
    upstream_model = models.CharField(_("upstream model"), max_length=200, blank=True)
    status = models.PositiveSmallIntegerField(_("status"), default=200)
    error_code = models.CharField(_("error code"), max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    cached_input_tokens = models.PositiveIntegerField(_("cached input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    reasoning_tokens = models.PositiveIntegerField(_("reasoning tokens"), default=0)
    # Empty when the model has no price: "price unknown", never a cost of 0.
    cost = models.DecimalField(_("cost (USD)"), max_digits=14, decimal_places=8, null=True, blank=True)
    time_to_first_event_ms = models.FloatField(_("time to first event (ms)"), null=True, blank=True)
    duration_ms = models.FloatField(_("duration (ms)"), default=0)
    client_transport = models.CharField(
        _("client transport"), max_length=10, choices=ClientTransport.choices, default=ClientTransport.HTTP
    )
    upstream_transport = models.CharField(
        _("upstream transport"), max_length=10, choices=Transport.choices, blank=True
    )
    fallback_reason = models.CharField(
        _("fallback reason"), max_length=40, choices=FallbackReason.choices, blank=True
    )
    ws_handshake_ms = models.FloatField(_("upstream handshake (ms)"), null=True, blank=True)
    upstream_ws_url = models.CharField(_("upstream WebSocket URL"), max_length=500, blank=True)
    response_id = models.CharField(_("response id"), max_length=200, blank=True, db_index=True)
    session_id = models.CharField(_("session"), max_length=200, blank=True)
    # Who the turn belongs to when it was made: the key's owner.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    # A database default: the log writer's multi-row INSERT names its columns, and rows written without a
    # trace (until tracing fills it) must not fail the NOT NULL.
    trace_id = models.CharField(_("trace id"), max_length=32, blank=True, db_default="")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("request log")
        verbose_name_plural = _("request logs")
        indexes = [
            # Covers every column the usage dashboard reads: its queries scan a date range of this index
            # alone, never the table (about ten times faster on SQLite with a million rows).
            models.Index(
                fields=[
                    "created_at",
                    "api_key",
                    "provider",
                    "upstream_model",
                    "client_transport",
                    "upstream_transport",
                    "fallback_reason",
                    "status",
                    "error_code",
                    "cost",
                    "input_tokens",
                    "cached_input_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                    "time_to_first_event_ms",
                ],
                name="requestlog_dashboard",
            ),
            # The portal reads one person's, one key's or one team's rows of a date range: without these
            # it scans every row of the range (the dashboard index does not hold the owner or the team).
            # A person's own pages: from this index alone once every row has its owner.
            models.Index(
                fields=[
                    "owner",
                    "created_at",
                    "api_key",
                    "upstream_model",
                    "client_transport",
                    "upstream_transport",
                    "cost",
                    "input_tokens",
                    "cached_input_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                    "session_id",
                ],
                name="requestlog_owner_time",
            ),
            # A lead's team page reads tens of thousands of rows a month: from this index alone.
            models.Index(
                fields=[
                    "team",
                    "created_at",
                    "api_key",
                    "owner",
                    "upstream_model",
                    "client_transport",
                    "upstream_transport",
                    "cost",
                    "input_tokens",
                    "cached_input_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                ],
                name="requestlog_team_time",
            ),
            # The sessions pages sum the rows of the sessions they show, and the request log filters on one.
            models.Index(fields=["session_id", "created_at"], name="requestlog_session"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.requested_model} {self.status}"

    @property
    def error_label(self) -> str:
        return error_label(self.error_code)


class Usage(RequestLog):
    """The usage dashboard's entry in the admin (a view over the request log, no table of its own)."""

    class Meta:
        proxy = True
        verbose_name = _("usage dashboard")
        verbose_name_plural = _("usage dashboard")


# What a roll-up cell is summed per, beside its hour or day: everything the usage dashboard and the portal
# filter and group by. The tables' unique constraints are made of these, and proxy/usage/rollup.py reads its
# cells' columns from those constraints.
CELL_COLUMNS = (
    "api_key_id",
    "team_id",
    "provider_id",
    "upstream_model",
    "client_transport",
    "upstream_transport",
    "fallback_reason",
    "status_class",
    "error_code",
)


class RollupCell(models.Model):
    """A roll-up cell of the request log (proxy/usage/rollup.py keeps them). Ids are plain integers, 0 for
    none, so that the unique key the increments upsert on holds (NULLs are never equal in a unique
    constraint); a deleted key's cells keep its id."""

    api_key_id = models.BigIntegerField(default=0)
    team_id = models.BigIntegerField(default=0)
    provider_id = models.BigIntegerField(default=0)
    upstream_model = models.CharField(max_length=200, blank=True)
    client_transport = models.CharField(max_length=16, blank=True)
    upstream_transport = models.CharField(max_length=16, blank=True)
    fallback_reason = models.CharField(max_length=64, blank=True)
    status_class = models.PositiveSmallIntegerField(default=2)  # 2, 4, 5: status // 100
    error_code = models.CharField(max_length=100, blank=True)
    turns = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageHour(RollupCell):
    """The request log summed per UTC hour and per cell column."""

    hour = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", *CELL_COLUMNS], name="usagehour_cell")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.upstream_model} {self.turns}"


class UsageDay(RollupCell):
    """The request log summed per UTC day, per cell column and per owner: what the dashboard and the
    portal read (a month is some thousands of cells where the hours are hundreds of thousands)."""

    day = models.DateField()
    owner_id = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", *CELL_COLUMNS, "owner_id"], name="usageday_cell")
        ]
        indexes = [
            # One key's, team's or person's cells of a range (the dashboard's filters, the portal).
            models.Index(fields=["api_key_id", "day"], name="usageday_key"),
            models.Index(fields=["team_id", "day"], name="usageday_team"),
            models.Index(fields=["owner_id", "day"], name="usageday_owner"),
            # The model filter's choices: the distinct models of 90 days, read from this index alone.
            models.Index(fields=["upstream_model", "day"], name="usageday_model"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.upstream_model} {self.turns}"


class LatencyDay(models.Model):
    """How many turns of a UTC day, provider and model had their time to first event in each bucket
    (proxy/usage/rollup.py: buckets 5 % wide): the dashboard's p50 and p95 without reading the rows."""

    day = models.DateField()
    provider_id = models.BigIntegerField(default=0)
    upstream_model = models.CharField(max_length=200, blank=True)
    bucket = models.PositiveSmallIntegerField()
    turns = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "provider_id", "upstream_model", "bucket"], name="latencyday_cell"
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.upstream_model} {self.bucket} {self.turns}"
