"""People and teams as SCIM 2.0 resources (scim2-models), and back.

A SCIM User is a Django user; the attributes the client wrote are kept as it wrote them (ScimUser.data), and
the user's username, names, e-mail and active flag are derived from them. A SCIM Group is a team: found by
its name or by one of its identity-provider groups; its members are the team's memberships of source scim.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from django.db.models import QuerySet
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    ETag,
    Filter,
    Group,
    GroupMember,
    Meta,
    Patch,
    ResourceType,
    ResponseParameters,
    Schema,
    ServiceProviderConfig,
    Sort,
    User,
)
from scim2_models.resources.user import GroupMembership

from identity.models import Membership, Role, ScimGroup, ScimUser
from identity.models import Source as MembershipSource
from proxy.models import Team

MAX_RESULTS = 200
# The User attributes Sluice keeps; the schema it publishes lists only these (a client asking for more
# gets only these back, which the compliance checker reads from the published schema).
USER_ATTRIBUTES = ("userName", "name", "displayName", "active", "emails", "groups")
NAME_PARTS = ("formatted", "familyName", "givenName")


def is_id(value: object) -> bool:
    """A SCIM id of ours: a database key (digits, within a 64-bit integer)."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18


def scim_users() -> QuerySet:
    """Everyone but superusers made by hand (no identity provider link): SCIM never touches those."""
    return (
        get_user_model()
        .objects.exclude(is_superuser=True, scim=None, oidc_subject=None)
        .select_related("scim")
        .order_by("pk")
    )


def user_schema() -> Schema:
    schema = User.to_schema()
    schema.attributes = [a for a in schema.attributes if a.name in USER_ATTRIBUTES]
    for attribute in schema.attributes:
        if attribute.name == "name":
            attribute.sub_attributes = [s for s in attribute.sub_attributes if s.name in NAME_PARTS]
    return schema


def group_schema() -> Schema:
    """Members are named by value, $ref and type; their display is the user's name, not the client's."""
    schema = Group.to_schema()
    for attribute in schema.attributes:
        if attribute.name == "members":
            attribute.sub_attributes = [s for s in attribute.sub_attributes if s.name != "display"]
    return schema


def schemas() -> list[Schema]:
    return [user_schema(), group_schema()]


def resource_types() -> list[ResourceType]:
    return [ResourceType.from_resource(User), ResourceType.from_resource(Group)]


def service_provider_config() -> ServiceProviderConfig:
    return ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="Bearer token",
                description="The token of SLUICE_SCIM_TOKEN, as Authorization: Bearer <token>.",
                primary=True,
            )
        ],
    )


def _meta(kind: str, location: str, created: Any, modified: Any) -> Meta:
    return Meta(resource_type=kind, location=location, created=created, last_modified=modified)


def user_resource(user: AbstractUser, base: str) -> User:
    scim = getattr(user, "scim", None)
    data = dict(scim.data) if scim is not None else {}
    if not data:  # a person who signed in but was never provisioned: what the user row says
        data = {"userName": user.get_username(), "name": {"givenName": user.first_name or None}}
        data["name"]["familyName"] = user.last_name or None
        if user.email:
            data["emails"] = [{"value": user.email, "primary": True}]
    data |= {"schemas": [User.__schema__], "userName": user.get_username()}
    # "active" is shown once set, and always for someone deactivated (a client removing it means active).
    if "active" in data or not user.is_active:
        data["active"] = user.is_active
    resource = User.model_validate(data)
    resource.id = str(user.pk)
    resource.external_id = scim.external_id or None if scim is not None else None
    teams = Team.objects.filter(memberships__user=user).order_by("name")
    resource.groups = [GroupMembership(value=str(t.pk), display=t.name, type="direct") for t in teams] or None
    created = scim.created_at if scim is not None else user.date_joined
    modified = scim.updated_at if scim is not None else user.date_joined
    resource.meta = _meta("User", f"{base}/Users/{user.pk}", created, modified)
    return resource


def user_dump(user: AbstractUser, base: str, shown: ResponseParameters | None = None) -> dict[str, Any]:
    resource = user_resource(user, base)
    return resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=shown)


def _primary_email(resource: User) -> str:
    emails = resource.emails or []
    chosen = next((e for e in emails if e.primary), emails[0] if emails else None)
    return str(chosen.value)[:254] if chosen is not None and chosen.value else ""


def store_user(user: AbstractUser, resource: User) -> None:
    """Write a SCIM User into the user (and its ScimUser), through the ORM so that signals fire."""
    user.username = resource.user_name
    user.email = _primary_email(resource)
    name = resource.name
    user.first_name = (name.given_name or "")[:150] if name else ""
    user.last_name = (name.family_name or "")[:150] if name else ""
    user.is_active = resource.active is not False
    if user.pk is None:
        user.set_unusable_password()
    user.save()
    data = resource.model_dump(scim_ctx=Context.RESOURCE_REPLACEMENT_REQUEST, exclude_none=True)
    for field in ("schemas", "id", "meta", "groups", "password", "externalId"):
        data.pop(field, None)
    ScimUser.objects.update_or_create(
        user=user, defaults={"external_id": (resource.external_id or "")[:255], "data": data}
    )


def team_named(name: str) -> Team | None:
    """The team called ``name``, or else the first whose identity-provider groups name it."""
    team = Team.objects.filter(name=name).first()
    if team is not None:
        return team
    # JSON lists are searched here, not in SQL: SQLite has no JSON containment lookup.
    return next((t for t in Team.objects.all() if name in [*t.idp_groups, *t.lead_idp_groups]), None)


def group_resource(team: Team, base: str) -> Group:
    members = (
        Membership.objects.filter(team=team, user__in=scim_users()).select_related("user").order_by("user_id")
    )
    scim = ScimGroup.objects.filter(team=team).first()
    return Group(
        id=str(team.pk),
        external_id=(scim.external_id or None) if scim is not None else None,
        display_name=team.name,
        members=[
            GroupMember(
                value=str(m.user_id),
                ref=f"{base}/Users/{m.user_id}",
                type="User",
            )
            for m in members
        ]
        or None,
        meta=_meta("Group", f"{base}/Groups/{team.pk}", team.created_at, team.created_at),
    )


def group_dump(team: Team, base: str, shown: ResponseParameters | None = None) -> dict[str, Any]:
    resource = group_resource(team, base)
    return resource.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE, response_parameters=shown)


def store_members(team: Team, resource: Group, pushed_name: str) -> None:
    """The team's SCIM memberships become the group's members (lead when the group is a lead group)."""
    wanted = {int(m.value) for m in resource.members or [] if is_id(m.value)}
    wanted &= set(scim_users().filter(pk__in=wanted).values_list("pk", flat=True))
    ScimGroup.objects.update_or_create(
        team=team, defaults={"external_id": (resource.external_id or "")[:255]}
    )
    role = Role.LEAD if pushed_name in (team.lead_idp_groups or []) else Role.MEMBER
    current = {m.user_id: m for m in Membership.objects.filter(team=team)}
    for user_id, membership in current.items():
        if user_id not in wanted and membership.source == MembershipSource.SCIM:
            membership.delete()
    for user_id in wanted - set(current):
        Membership.objects.create(user_id=user_id, team=team, role=role, source=MembershipSource.SCIM)
