"""The admin index's first links: the usage dashboard, and the audit log once its app is installed."""

from typing import Any

from django import template
from django.apps import apps
from django.urls import NoReverseMatch, reverse

register = template.Library()


@register.simple_tag(takes_context=True)
def audit_log_url(context: dict[str, Any]) -> str:
    """The audit app's admin page for someone who may see it; "" without the app or the permission."""
    request = context.get("request")
    if not apps.is_installed("audit") or request is None or not request.user.has_module_perms("audit"):
        return ""
    try:
        return reverse("admin:app_list", kwargs={"app_label": "audit"})
    except NoReverseMatch:  # the app registers nothing in the admin
        return ""
