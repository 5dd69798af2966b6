"""From checked claims to a person: found by (issuer, subject), named and e-mailed from the claims, and
placed in teams and roles by the groups claim, at every sign-in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from audit.context import Actor, Source, acting
from identity.models import Membership, OidcSubject, Role, ScimUser
from identity.models import Source as MembershipSource
from identity.oidc import Config, SignInError
from proxy.models import Team

log = logging.getLogger("sluice.identity")
MAX_GROUPS = 1000
MAX_GROUP_NAME = 255

BAD_GROUPS = _(
    "The identity provider sent your groups in a form Sluice cannot read. Please ask your administrator."
)
NO_TEAM = _(
    "You signed in, but none of your groups gives access to Sluice. Ask your administrator to add you to "
    "a team's group."
)
INACTIVE = _("Your account is deactivated. Please ask your administrator.")


def groups_from(claims: dict[str, Any], claim: str) -> list[str]:
    """The groups claim as a list of names; a string, a huge list or odd members are refused."""
    if claim not in claims or claims[claim] is None:
        return []
    value = claims[claim]
    if not isinstance(value, list):
        raise SignInError(BAD_GROUPS, f"groups claim {claim!r} is a {type(value).__name__}, not a list")
    if len(value) > MAX_GROUPS:
        raise SignInError(BAD_GROUPS, f"groups claim {claim!r} has {len(value)} entries (most {MAX_GROUPS})")
    if not all(isinstance(name, str) and 0 < len(name) <= MAX_GROUP_NAME for name in value):
        raise SignInError(BAD_GROUPS, f"groups claim {claim!r} holds something other than group names")
    return sorted(set(value))


@dataclass(frozen=True)
class Outcome:
    user: AbstractUser
    teams: int
    admin: bool
    staff: bool

    @property
    def allowed(self) -> bool:
        return self.admin or self.staff or self.teams > 0


def sign_in(cfg: Config, claims: dict[str, Any], groups: list[str], client_ip: str) -> Outcome:
    """Find or create the person, refresh their details, and set their teams and roles from ``groups``."""
    arriving = str(claims.get("preferred_username") or claims.get("email") or claims["sub"])[:150]
    with transaction.atomic(), acting(Actor(arriving, Source.SIGN_IN, None, client_ip)):
        user = _find_or_create(cfg, claims)
        if not user.is_active:
            raise SignInError(INACTIVE, f"user {user.pk} is deactivated")
        with acting(actor_for(user, client_ip)):
            admin = bool(set(groups) & set(settings.SLUICE_OIDC_ADMIN_GROUPS))
            staff = admin or bool(set(groups) & set(settings.SLUICE_OIDC_STAFF_GROUPS))
            _set_details(user, claims, admin, staff)
            teams = set_memberships(user, groups, MembershipSource.OIDC)
            OidcSubject.objects.filter(user=user).update(groups=groups, last_sign_in=timezone.now())
    return Outcome(user, teams, admin, staff)


def actor_for(user: AbstractUser, client_ip: str) -> Actor:
    """Who changes things while someone signs in: that person, through sign-in."""
    return Actor(user.get_username(), Source.SIGN_IN, user.pk, client_ip)


def _find_or_create(cfg: Config, claims: dict[str, Any]) -> AbstractUser:
    subject = claims["sub"]
    link = OidcSubject.objects.select_related("user").filter(issuer=cfg.issuer, subject=subject).first()
    if link is not None:
        return link.user
    # A person provisioned by SCIM before their first sign-in: the provisioning client's externalId is the
    # provider's subject, or Entra ID's object id (`oid`: its subject is per application and cannot be
    # sent over SCIM). Never matched by e-mail or name (docs/identity.md).
    oid = claims.get("oid")
    known = [subject, oid] if isinstance(oid, str) and oid else [subject]
    scim = (
        ScimUser.objects.select_related("user").filter(external_id__in=known, user__oidc_subject=None).first()
    )
    if scim is not None:
        user = scim.user
    else:
        User = get_user_model()
        base = str(claims.get("preferred_username") or claims.get("email") or subject)[:140]
        username, n = base, 1
        while User.objects.filter(username=username).exists():
            n += 1
            username = f"{base}-{n}"
        user = User(username=username)
        user.set_unusable_password()
        user.save()
        log.info("sign-in: created user %s for subject %s of %s", user.pk, subject[:64], cfg.issuer)
    OidcSubject.objects.create(user=user, issuer=cfg.issuer, subject=subject)
    return user


def _set_details(user: AbstractUser, claims: dict[str, Any], admin: bool, staff: bool) -> None:
    def text(name: str, limit: int) -> str:
        value = claims.get(name)
        return value[:limit] if isinstance(value, str) else ""

    user.first_name = text("given_name", 150) or user.first_name
    user.last_name = text("family_name", 150) or user.last_name
    if not (user.first_name or user.last_name) and text("name", 150):
        user.first_name = text("name", 150)
    user.email = text("email", 254) or user.email
    user.is_superuser = admin
    user.is_staff = staff
    user.save()
    group, _created = Group.objects.get_or_create(name=settings.SLUICE_OIDC_STAFF_PERMISSION_GROUP)
    if staff and not admin:
        user.groups.add(group)
    else:
        user.groups.remove(group)


def set_memberships(user: AbstractUser, groups: list[str], source: str) -> int:
    """Membership of every team one of ``groups`` maps to (lead if a lead group); others of ``source`` go.

    Memberships set by hand stay: the identity provider only adds and removes what it gave.
    """
    wanted: dict[int, str] = {}
    names = set(groups)
    for team in Team.objects.all():
        if names & set(team.lead_idp_groups or []):
            wanted[team.pk] = Role.LEAD
        elif names & set(team.idp_groups or []):
            wanted[team.pk] = Role.MEMBER
    current = {m.team_id: m for m in Membership.objects.filter(user=user)}
    for team_id, membership in current.items():
        if team_id not in wanted and membership.source == source:
            membership.delete()
    for team_id, role in wanted.items():
        membership = current.get(team_id)
        if membership is None:
            Membership.objects.create(user=user, team_id=team_id, role=role, source=source)
        elif membership.source != MembershipSource.MANUAL and membership.role != role:
            membership.role = role
            membership.source = source
            membership.save()
    return Membership.objects.filter(user=user).count()
