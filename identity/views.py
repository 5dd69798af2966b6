"""Sign-in with the organisation's identity provider: /auth/oidc/login/, /auth/oidc/callback/ and sign-out."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import login, logout
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from audit.context import acting
from identity import oidc, signin
from identity.oidc import SignInError

log = logging.getLogger("sluice.identity")
SESSION_FLOWS = "sluice_oidc_flows"
SESSION_ID_TOKEN = "sluice_oidc_id_token"
# Sign-ins a browser may have in flight at once (several tabs); older ones are forgotten.
MAX_FLOWS = 5
PORTAL_PATH = "/portal/"

NO_FLOW = _("This sign-in link has expired or was already used. Please start again.")


def _safe_next(request: HttpRequest, candidate: str | None) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return ""


def _redirect_uri(request: HttpRequest) -> str:
    path = reverse("identity:oidc-callback")
    public = settings.PUBLIC_URL
    if public.netloc:
        return f"{public.scheme}://{public.netloc}{path}"
    return request.build_absolute_uri(path)


def _client_ip(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "")


def refused(request: HttpRequest, error: SignInError, status: int = 403) -> HttpResponse:
    """The one page every failed sign-in ends on: what happened in the person's language, logged once."""
    log.warning("sign-in refused from %s: %s", _client_ip(request), error.detail)
    cfg = oidc.config()
    context = {
        **admin.site.each_context(request),
        "title": _("Sign-in refused"),
        "message": error.message,
        "retry_url": reverse("identity:oidc-login"),
        "provider": cfg.name if cfg else "",
    }
    return render(request, "identity/refused.html", context, status=status)


@never_cache
@require_GET
def oidc_login(request: HttpRequest) -> HttpResponse:
    cfg = oidc.config()
    if cfg is None:
        raise Http404
    flow = oidc.new_flow(_safe_next(request, request.GET.get("next")), _redirect_uri(request))
    try:
        url = oidc.authorization_url(cfg, flow)
    except SignInError as error:
        return refused(request, error, status=502)
    flows = request.session.get(SESSION_FLOWS, {})
    flows[flow.state] = asdict(flow)
    request.session[SESSION_FLOWS] = dict(list(flows.items())[-MAX_FLOWS:])
    return HttpResponseRedirect(url)


@never_cache
@require_GET
def oidc_callback(request: HttpRequest) -> HttpResponse:
    cfg = oidc.config()
    if cfg is None:
        raise Http404
    try:
        return _finish(request, cfg)
    except SignInError as error:
        status = 502 if error.message is oidc.UNREACHABLE else 403
        return refused(request, error, status=status)


def _finish(request: HttpRequest, cfg: oidc.Config) -> HttpResponse:
    state = request.GET.get("state", "")
    flows: dict[str, Any] = request.session.get(SESSION_FLOWS, {})
    saved = flows.pop(state, None) if state else None
    request.session[SESSION_FLOWS] = flows
    if saved is None:
        raise SignInError(NO_FLOW, "callback: unknown or reused state")
    flow = oidc.Flow(**saved)
    issuer = request.GET.get("iss")
    if issuer is not None and issuer.rstrip("/") != cfg.issuer:  # RFC 9207: an answer meant for another
        raise SignInError(oidc.REFUSED_CODE, f"callback: iss {issuer[:100]!r} is not the configured issuer")
    if "error" in request.GET:
        reason = request.GET.get("error", "")[:100]
        raise SignInError(oidc.REFUSED_CODE, f"callback: the provider sent error {reason!r}")
    code = request.GET.get("code", "")
    if not code:
        raise SignInError(NO_FLOW, "callback: no code")
    tokens = oidc.exchange(cfg, flow, code)
    claims = oidc.verify_id_token(cfg, tokens["id_token"], flow.nonce)
    if cfg.groups_claim not in claims:
        access = tokens.get("access_token")
        claims = oidc.userinfo(cfg, access if isinstance(access, str) else "", claims["sub"]) | claims
    groups = signin.groups_from(claims, cfg.groups_claim)
    outcome = signin.sign_in(cfg, claims, groups, _client_ip(request))
    if not outcome.allowed:
        raise SignInError(
            signin.NO_TEAM, f"user {outcome.user.pk} is in no mapped group ({len(groups)} groups)"
        )
    # The session is loaded again by this backend (ModelBackend.get_user: active users only).
    with acting(signin.actor_for(outcome.user, _client_ip(request))):  # login() saves last_login
        login(request, outcome.user, backend="identity.passwords.PasswordBackend")
    request.session[SESSION_ID_TOKEN] = tokens["id_token"]
    log.info("sign-in: user %s with %s team(s)", outcome.user.pk, outcome.teams)
    admin_path = reverse("admin:index")
    if flow.next_url and (outcome.user.is_staff or not flow.next_url.startswith(admin_path)):
        return HttpResponseRedirect(flow.next_url)
    return HttpResponseRedirect(admin_path if outcome.user.is_staff else PORTAL_PATH)


@never_cache
@require_http_methods(["GET", "POST"])
def sign_out(request: HttpRequest) -> HttpResponse:
    """Ends the session, then the provider's (its end_session_endpoint) for people who signed in there.

    A GET shows the admin's own sign-out (Django signs out on POST only, against cross-site requests).
    """
    if request.method == "GET":
        return admin.site.logout(request)
    id_token = request.session.get(SESSION_ID_TOKEN, "")
    cfg = oidc.config()
    logout(request)
    after = request.build_absolute_uri(reverse("admin:login"))
    if id_token and cfg is not None:
        url = oidc.end_session_url(cfg, id_token, after)
        if url:
            return HttpResponseRedirect(url)
    return HttpResponseRedirect(after)
