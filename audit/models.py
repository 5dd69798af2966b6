"""The audit log (append-only, chained by hashes) and the alert channels, policies and deliveries."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from providers import crypto  # the provider keys' encryption at rest, reused for the channels' URLs


class Action(models.TextChoices):
    CREATE = "create", _("create")
    UPDATE = "update", _("update")
    DELETE = "delete", _("delete")
    REVOKE = "revoke", _("revoke")
    EXPIRE = "expire", _("expire")
    SIGN_IN = "sign-in", _("sign-in")
    SIGN_IN_FAILED = "sign-in-failed", _("failed sign-in")
    SIGN_OUT = "sign-out", _("sign-out")
    TEST_ALERT = "test-alert", _("test alert")


class AuditEvent(models.Model):
    """One change or sign-in. Rows are only ever added: ``hash`` covers the row and the previous row's hash,
    so editing or removing a row breaks the chain that ``manage.py verifyaudit`` recomputes."""

    seq = models.PositiveBigIntegerField(_("sequence"), unique=True)
    time = models.DateTimeField(_("time"), db_index=True)
    actor = models.CharField(_("actor"), max_length=200, db_index=True)
    actor_user_id = models.BigIntegerField(_("actor user id"), null=True, blank=True)
    source = models.CharField(_("source"), max_length=20)
    action = models.CharField(_("action"), max_length=20, choices=Action.choices)
    object_type = models.CharField(_("object type"), max_length=100, blank=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    object_label = models.CharField(_("object"), max_length=300, blank=True)
    changes = models.JSONField(_("changes"), default=dict, blank=True)
    client_ip = models.CharField(_("client address"), max_length=64, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    prev_hash = models.CharField(_("previous hash"), max_length=64)
    hash = models.CharField(_("hash"), max_length=64)

    class Meta:
        ordering = ["-seq"]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit log")
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.actor} {self.action} {self.object_type} {self.object_label}"


class AuditChain(models.Model):
    """One row: the head of the chain (taken under a row lock to append, so the chain stays linear across
    processes and nodes) and the anchor left by retention (the last pruned row's sequence and hash)."""

    head_seq = models.PositiveBigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, blank=True)
    anchor_seq = models.PositiveBigIntegerField(default=0)
    anchor_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = _("audit chain")
        verbose_name_plural = _("audit chain")

    def __str__(self) -> str:
        return f"{self.head_seq} {self.head_hash}"


class AlertChannel(models.Model):
    """An Apprise URL alerts go to; stored encrypted, since it often holds a webhook token or a password."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    url_encrypted = models.TextField(_("URL (encrypted)"), editable=False)
    url_hint = models.CharField(_("URL"), max_length=120, editable=False, blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    teams = models.ManyToManyField(
        "proxy.Team",
        verbose_name=_("teams"),
        blank=True,
        related_name="+",
        help_text=_("Only alerts about these teams and their keys; none: every alert."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("alert channel")
        verbose_name_plural = _("alert channels")

    def __str__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return crypto.decrypt(self.url_encrypted)

    def set_url(self, raw: str) -> None:
        self.url_encrypted = crypto.encrypt(raw)
        self.url_hint = mask_url(raw)


def mask_url(raw: str) -> str:
    """The scheme and host part an operator recognises, never the path, query or credentials."""
    scheme, _sep, rest = raw.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…" if host else f"{scheme}://…"


def default_thresholds() -> list[int]:
    return [80, 100]


def _validate_thresholds(value: object) -> None:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000 for v in value
    ):
        raise ValidationError(_("Enter a JSON list of whole percentages from 1 to 1000."))


class TeamAlertPolicy(models.Model):
    """Budget thresholds (percent of the daily and monthly budgets) for a team and its keys."""

    team = models.OneToOneField(
        "proxy.Team", verbose_name=_("team"), on_delete=models.CASCADE, related_name="alert_policy"
    )
    thresholds = models.JSONField(
        _("budget thresholds (%)"),
        default=default_thresholds,
        blank=True,
        validators=[_validate_thresholds],
        help_text=_("A JSON list of percentages of the daily and monthly budgets, e.g. [50, 80, 100]."),
    )

    class Meta:
        verbose_name = _("team alert policy")
        verbose_name_plural = _("team alert policies")

    def __str__(self) -> str:
        return str(self.team)


class AlertSent(models.Model):
    """An alert decided once per subject, threshold and period, whichever node saw it first: the unique
    constraint makes the second insert fail everywhere."""

    subject = models.CharField(max_length=100)
    threshold = models.CharField(max_length=50)
    period = models.CharField(max_length=20)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subject", "threshold", "period"], name="alert_sent_once")
        ]

    def __str__(self) -> str:
        return f"{self.subject} {self.threshold} {self.period}"


class DeliveryStatus(models.TextChoices):
    SENT = "sent", _("sent")
    FAILED = "failed", _("failed")


class AlertDelivery(models.Model):
    time = models.DateTimeField(_("time"), auto_now_add=True, db_index=True)
    channel = models.CharField(_("channel"), max_length=120)
    event = models.CharField(_("event"), max_length=40)
    title = models.CharField(_("title"), max_length=300)
    status = models.CharField(_("status"), max_length=10, choices=DeliveryStatus.choices)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=1)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        ordering = ["-time"]
        verbose_name = _("alert delivery")
        verbose_name_plural = _("alert deliveries")

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.channel} {self.event} {self.status}"


# An audit row's own fields, in the order every reader shows them (the chain hashes them with the
# previous row's hash; the admin's CSV adds the row's hash).
FIELDS = (
    "seq",
    "time",
    "actor",
    "actor_user_id",
    "source",
    "action",
    "object_type",
    "object_id",
    "object_label",
    "changes",
    "client_ip",
    "request_id",
)
