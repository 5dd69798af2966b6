"""What the sign-in pages (the admin's login page, the portal's) need to know about sign-in."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from identity import oidc


def sign_in(request: HttpRequest) -> dict[str, Any]:
    cfg = oidc.config()
    return {
        "sluice_oidc_name": cfg.name if cfg else "",
        "sluice_password_login": settings.SLUICE_PASSWORD_LOGIN,
    }
