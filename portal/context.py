"""What every portal page's navigation needs: the teams the person leads."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

PREFIX = "/portal/"


def nav(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if not request.path.startswith(PREFIX) or user is None or not user.is_authenticated:
        return {}
    from identity.models import Membership, Role  # here: only portal pages need it, admin pages skip it

    led = Membership.objects.filter(user=user, role=Role.LEAD).select_related("team").order_by("team__name")
    return {"led_teams": [m.team for m in led]}
