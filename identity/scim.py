"""SCIM 2.0 at /scim/v2/ (RFC 7643, 7644): identity providers create, update, deactivate and delete people
and set team memberships. Bearer token from SLUICE_SCIM_TOKEN; every answer is application/scim+json, errors
in the SCIM error schema. Changes are recorded as the actor "scim"."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import ValidationError
from scim2_models import Context, Error, Group, ListResponse, PatchOp, ResponseParameters, User

from audit.context import Actor, Source, acting
from identity import scim_resources as res
from proxy.models import Team

log = logging.getLogger("sluice.scim")
CONTENT_TYPE = "application/scim+json"
FILTER = re.compile(r'^\s*(userName|displayName|externalId)\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
MAX_BODY = 1024 * 1024


class ScimError(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.scim_type = status, detail, scim_type


def answer(body: Any, status: int = 200, **headers: str) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type=CONTENT_TYPE)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def error(status: int, detail: str, scim_type: str | None = None) -> HttpResponse:
    body = Error(status=status, scim_type=scim_type, detail=detail).model_dump()
    headers = {"WWW_Authenticate": 'Bearer realm="scim"'} if status == 401 else {}
    response = answer(body, status, **headers)
    response._has_been_logged = True  # type: ignore[attr-defined] # logged once, by this module (a 501 too)
    return response


def _authorised(request: HttpRequest) -> bool:
    token = settings.SLUICE_SCIM_TOKEN
    given = request.headers.get("Authorization", "")
    return (
        bool(token)
        and given.startswith("Bearer ")
        and secrets.compare_digest(given[7:].encode(), token.encode())
    )


def endpoint(view: Callable[..., Any]) -> Callable[..., HttpResponse]:
    """Token, JSON body and SCIM errors around a view; changes inside run as the SCIM actor."""

    @csrf_exempt
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.SLUICE_SCIM_TOKEN:
            return error(404, "SCIM is not configured (SLUICE_SCIM_TOKEN).")
        if not _authorised(request):
            log.warning("scim: refused %s %s: no valid bearer token", request.method, request.path)
            return error(401, "A valid bearer token is required.")
        actor = Actor("scim", Source.SCIM, None, request.META.get("REMOTE_ADDR", ""))
        try:
            with acting(actor), transaction.atomic():
                return view(request, *args, **kwargs)
        except ScimError as refusal:
            log.warning(
                "scim: %s %s refused (%s): %s", request.method, request.path, refusal.status, refusal.detail
            )
            return error(refusal.status, refusal.detail, refusal.scim_type)

    return wrapped


def shown(request: HttpRequest) -> ResponseParameters:
    """The attributes and excludedAttributes the client asked for."""
    return parse(
        ResponseParameters,
        {
            "attributes": request.GET.get("attributes"),
            "excludedAttributes": request.GET.get("excludedAttributes"),
        },
        Context.DEFAULT,
    )


def base_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/scim/v2").rstrip("/")


def body_of(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise ScimError(413, f"The body is over {MAX_BODY} bytes.", "tooMany")
    try:
        data = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise ScimError(400, "The body is not valid JSON.", "invalidSyntax") from None
    if not isinstance(data, dict):
        raise ScimError(400, "The body is not a JSON object.", "invalidSyntax")
    return data


def parse(model: Any, data: dict[str, Any], context: Context) -> Any:
    try:
        return model.model_validate(data, scim_ctx=context)
    except ValidationError as invalid:
        first = invalid.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ScimError(400, f"{where}: {first['msg']}"[:300], "invalidValue") from None
    except ValueError as invalid:
        raise ScimError(400, str(invalid)[:300], "invalidValue") from None


def paginate(request: HttpRequest, items: list[Any], dump: Callable[[Any], dict[str, Any]]) -> HttpResponse:
    try:
        start = max(1, int(request.GET.get("startIndex", 1)))
        count = min(res.MAX_RESULTS, max(0, int(request.GET.get("count", res.MAX_RESULTS))))
    except ValueError:
        raise ScimError(400, "startIndex and count are integers.", "invalidValue") from None
    page = items[start - 1 : start - 1 + count]
    listing = ListResponse[User | Group](
        total_results=len(items), start_index=start, items_per_page=len(page), resources=[]
    ).model_dump(scim_ctx=Context.SEARCH_RESPONSE)
    listing["Resources"] = [dump(item) for item in page]
    return answer(listing)


def filter_value(request: HttpRequest, allowed: set[str]) -> tuple[str, str] | None:
    text = request.GET.get("filter")
    if not text:
        return None
    match = FILTER.match(text)
    if match is None or match.group(1).lower() not in {a.lower() for a in allowed}:
        raise ScimError(
            400, f'Only {" or ".join(sorted(allowed))} eq "..." filters are supported.', "invalidFilter"
        )
    try:
        return match.group(1).lower(), json.loads(f'"{match.group(2)}"')
    except ValueError:
        raise ScimError(400, "The filter's value is not a valid string.", "invalidFilter") from None


def listing(
    request: HttpRequest,
    everything: Callable[[], Iterable[Any]],
    filters: dict[str, Callable[[str], Iterable[Any]]],
    dump: Callable[[Any, str, ResponseParameters], dict[str, Any]],
) -> HttpResponse:
    """A GET of the Users or the Groups: all of them, or those of the one filter the client gave (an
    attribute of ``filters`` equal to a value), a page of them as a ListResponse, each with the attributes
    the client asked for."""
    chosen = filter_value(request, set(filters))
    if chosen is None:
        found = everything()
    else:
        by_name = {name.lower(): select for name, select in filters.items()}
        found = by_name[chosen[0]](chosen[1])
    base, fields = base_url(request), shown(request)
    return paginate(request, list(found), lambda item: dump(item, base, fields))


# Users

USER_FILTERS: dict[str, Callable[[str], Iterable[Any]]] = {
    "userName": lambda value: res.scim_users().filter(username__iexact=value),
    "externalId": lambda value: res.scim_users().filter(scim__external_id=value),
}


@endpoint
def users(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return listing(request, res.scim_users, USER_FILTERS, res.user_dump)
    base = base_url(request)
    if request.method != "POST":
        raise ScimError(405, "Users takes GET and POST.")
    resource = parse(User, body_of(request), Context.RESOURCE_CREATION_REQUEST)
    if get_user_model().objects.filter(username__iexact=resource.user_name).exists():
        raise ScimError(409, "A user with this userName exists.", "uniqueness")
    user = get_user_model()()
    _store(user, resource)
    log.info("scim: created user %s", user.pk)
    return answer(res.user_dump(_user(str(user.pk)), base), 201, Location=f"{base}/Users/{user.pk}")


def _store(user: Any, resource: User) -> None:
    if not resource.user_name or len(resource.user_name) > 150:
        raise ScimError(400, "userName is required (at most 150 characters).", "invalidValue")
    try:
        with transaction.atomic():
            res.store_user(user, resource)
    except IntegrityError:
        raise ScimError(409, "A user with this userName exists.", "uniqueness") from None


def _user(pk: str) -> Any:
    user = res.scim_users().filter(pk=int(pk)).first() if res.is_id(pk) else None
    if user is None:
        raise ScimError(404, f"No user {pk[:40]}.")
    return user


@endpoint
def user(request: HttpRequest, pk: str) -> HttpResponse:
    found, base = _user(pk), base_url(request)
    if request.method == "GET":
        return answer(res.user_dump(found, base, shown(request)))
    if request.method == "DELETE":
        found.delete()  # keys go with their owner; each deletion closes its sockets (proxy's signals)
        log.info("scim: deleted user %s", pk)
        return HttpResponse(status=204)
    if request.method == "PUT":
        resource = parse(User, body_of(request), Context.RESOURCE_REPLACEMENT_REQUEST)
    elif request.method == "PATCH":
        patch = parse(PatchOp[User], body_of(request), Context.RESOURCE_PATCH_REQUEST)
        resource = res.user_resource(found, base)
        _apply(patch, resource)
    else:
        raise ScimError(405, "A user takes GET, PUT, PATCH and DELETE.")
    if get_user_model().objects.filter(username__iexact=resource.user_name).exclude(pk=found.pk).exists():
        raise ScimError(409, "A user with this userName exists.", "uniqueness")
    _store(found, resource)
    log.info("scim: updated user %s (active: %s)", found.pk, found.is_active)
    return answer(res.user_dump(_user(pk), base))  # read again: the SCIM row was replaced


def _apply(patch: Any, resource: Any) -> None:
    try:
        patch.patch(resource)
    except (ValueError, TypeError, KeyError, AttributeError) as invalid:
        raise ScimError(400, str(invalid)[:300], "invalidPath") from None


# Groups

GROUP_FILTERS: dict[str, Callable[[str], Iterable[Any]]] = {
    "displayName": lambda value: [team] if (team := res.team_named(value)) is not None else [],
}


@endpoint
def groups(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return listing(request, lambda: Team.objects.order_by("pk"), GROUP_FILTERS, res.group_dump)
    base = base_url(request)
    if request.method != "POST":
        raise ScimError(405, "Groups takes GET and POST.")
    resource = parse(Group, body_of(request), Context.RESOURCE_CREATION_REQUEST)
    name = (resource.display_name or "").strip()
    if not name or len(name) > 100:
        raise ScimError(400, "displayName is required (at most 100 characters).", "invalidValue")
    team = res.team_named(name)
    if team is None:
        # A group pushed before any team maps it: a new team, without self-service keys until an
        # administrator sets its limits and policy.
        team = Team.objects.create(name=name, idp_groups=[name], self_service=False)
        log.info("scim: created team %s for group %r", team.pk, name)
    res.store_members(team, resource, name)
    return answer(res.group_dump(team, base), 201, Location=f"{base}/Groups/{team.pk}")


def _team(pk: str) -> Team:
    team = Team.objects.filter(pk=int(pk)).first() if res.is_id(pk) else None
    if team is None:
        raise ScimError(404, f"No group {pk[:40]}.")
    return team


@endpoint
def group(request: HttpRequest, pk: str) -> HttpResponse:
    team, base = _team(pk), base_url(request)
    if request.method == "GET":
        return answer(res.group_dump(team, base, shown(request)))
    if request.method == "DELETE":
        team.delete()
        log.info("scim: deleted team %s", pk)
        return HttpResponse(status=204)
    if request.method == "PUT":
        resource = parse(Group, body_of(request), Context.RESOURCE_REPLACEMENT_REQUEST)
    elif request.method == "PATCH":
        patch = parse(PatchOp[Group], body_of(request), Context.RESOURCE_PATCH_REQUEST)
        resource = res.group_resource(team, base)
        _apply(patch, resource)
    else:
        raise ScimError(405, "A group takes GET, PUT, PATCH and DELETE.")
    name = (resource.display_name or "").strip()
    if name and name != team.name and not Team.objects.filter(name=name).exists() and len(name) <= 100:
        team.name = name
        team.save(update_fields=["name"])
    res.store_members(team, resource, name)
    return answer(res.group_dump(team, base))


# Discovery


@endpoint
def service_provider_config(request: HttpRequest) -> HttpResponse:
    _only_get(request)
    config = res.service_provider_config()
    config.meta = res._meta("ServiceProviderConfig", f"{base_url(request)}/ServiceProviderConfig", None, None)
    return answer(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def _only_get(request: HttpRequest) -> None:
    if request.method != "GET":
        raise ScimError(405, "Discovery endpoints take GET only.")


def _discovery(request: HttpRequest, items: list[Any], kind: str, pk: str | None) -> HttpResponse:
    _only_get(request)
    base = base_url(request)
    for item in items:
        item.meta = res._meta(kind, f"{base}/{kind}s/{item.id}", None, None)
    dump = [item.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE) for item in items]
    if pk is None:
        return paginate(request, dump, lambda item: item)
    chosen = [d for d, item in zip(dump, items, strict=True) if item.id == pk]
    if not chosen:
        raise ScimError(404, f"No {kind} {pk[:100]}.")
    return answer(chosen[0])


@endpoint
def schemas(request: HttpRequest, pk: str | None = None) -> HttpResponse:
    return _discovery(request, res.schemas(), "Schema", pk)


@endpoint
def resource_types(request: HttpRequest, pk: str | None = None) -> HttpResponse:
    return _discovery(request, res.resource_types(), "ResourceType", pk)


@endpoint
def not_found(request: HttpRequest, rest: str) -> HttpResponse:
    if rest == ".search":
        raise ScimError(501, "Searching several resource types at once is not supported.")
    raise ScimError(404, "No such SCIM endpoint.")
