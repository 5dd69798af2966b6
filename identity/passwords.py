"""Password sign-in: off when SLUICE_PASSWORD_LOGIN says so (but for a break-glass superuser), and
throttled by django-axes, whose lockout page is here."""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from identity.models import BreakGlass


class PasswordBackend(ModelBackend):
    """Django's own password check, refused while password sign-in is off unless break-glass allows it."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None or settings.SLUICE_PASSWORD_LOGIN:
            return user
        if user.is_superuser and BreakGlass.objects.filter(user=user, until__gt=timezone.now()).exists():
            return user
        return None


def locked_out(request: HttpRequest, response: HttpResponse | None, credentials: dict | None) -> HttpResponse:
    """The page a locked-out sign-in gets: why, and in how many minutes to try again."""
    cool_off = get_cool_off(request)
    minutes = math.ceil(cool_off.total_seconds() / 60) if cool_off else 0
    context = {**admin.site.each_context(request), "title": _("Sign-in locked"), "minutes": minutes}
    return render(request, "identity/locked.html", context, status=429)
