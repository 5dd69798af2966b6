from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Role(models.TextChoices):
    MEMBER = "member", _("member")
    LEAD = "lead", _("team lead")


class Source(models.TextChoices):
    MANUAL = "manual", _("set by hand")
    OIDC = "oidc", _("identity provider sign-in")
    SCIM = "scim", _("SCIM")


class Membership(models.Model):
    """A person in a team: a member makes keys of the team; a lead also sees its people and usage."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(
        "proxy.Team", verbose_name=_("team"), on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(_("role"), max_length=10, choices=Role.choices, default=Role.MEMBER)
    source = models.CharField(_("source"), max_length=10, choices=Source.choices, default=Source.MANUAL)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        ordering = ["team__name", "user__username"]
        verbose_name = _("membership")
        verbose_name_plural = _("memberships")
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.team}"


class OidcSubject(models.Model):
    """The identity provider's name for a person: users are found by (issuer, subject), never by e-mail."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.CASCADE,
        related_name="oidc_subject",
    )
    issuer = models.CharField(_("issuer"), max_length=300)
    subject = models.CharField(_("subject"), max_length=255)
    groups = models.JSONField(_("groups at the last sign-in"), default=list, blank=True)
    last_sign_in = models.DateTimeField(_("last sign-in"), null=True, blank=True)

    class Meta:
        verbose_name = _("identity provider account")
        verbose_name_plural = _("identity provider accounts")
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_subject_unique")]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"


class ScimUser(models.Model):
    """What SCIM keeps about a person beyond the user: the provisioning client's id for them."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE, related_name="scim"
    )
    external_id = models.CharField(_("external id"), max_length=255, blank=True)
    # The SCIM attributes as the client last wrote them (e-mails, names, display name), so that what it
    # reads back is what it wrote; the user's own fields are derived from them.
    data = models.JSONField(_("SCIM attributes"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("SCIM account")
        verbose_name_plural = _("SCIM accounts")

    def __str__(self) -> str:
        return self.external_id or str(self.user)


class BreakGlass(models.Model):
    """One superuser may sign in with a password until ``until``, although password sign-in is off."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, verbose_name=_("user"), on_delete=models.CASCADE)
    until = models.DateTimeField(_("until"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("break-glass password sign-in")
        verbose_name_plural = _("break-glass password sign-ins")

    def __str__(self) -> str:
        return f"{self.user} until {self.until:%Y-%m-%d %H:%M}"


class ScimGroup(models.Model):
    """What SCIM keeps about a team beyond the team: the provisioning client's id for its group."""

    team = models.OneToOneField(
        "proxy.Team", verbose_name=_("team"), on_delete=models.CASCADE, related_name="scim_group"
    )
    external_id = models.CharField(_("external id"), max_length=255, blank=True)

    class Meta:
        verbose_name = _("SCIM group")
        verbose_name_plural = _("SCIM groups")

    def __str__(self) -> str:
        return self.external_id or str(self.team)
