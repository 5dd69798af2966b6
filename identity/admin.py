from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from identity.models import BreakGlass, Membership, OidcSubject
from proxy.admin.modeladmins import LedTeamsFilter, led_teams
from proxy.models import Team


@admin.register(OidcSubject)
class OidcSubjectAdmin(admin.ModelAdmin):
    """Who signed in from the identity provider as whom; written by sign-in only."""

    list_display = ("user", "subject", "issuer", "last_sign_in")
    search_fields = ("user__username", "subject")
    readonly_fields = ("user", "issuer", "subject", "groups", "last_sign_in")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(BreakGlass)
class BreakGlassAdmin(admin.ModelAdmin):
    """Break-glass password sign-ins (made by `manage.py breakglass`): delete a row to end one early."""

    list_display = ("user", "until", "created_at")
    readonly_fields = ("user", "until", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """People in teams: a lead sees the team's people, usage and keys in the portal. Memberships from the
    identity provider are set again at each sign-in; those set here by hand stay."""

    list_display = ("user", "team", "role", "source", "created_at")
    list_filter = ("role", "source", ("team", LedTeamsFilter))
    search_fields = ("user__username", "user__email", "team__name")
    autocomplete_fields = ("user", "team")
    readonly_fields = ("source", "created_at")

    # A team lead (staff, not a superuser) sees, changes and adds only their teams' memberships.
    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        qs = super().get_queryset(request)
        led = led_teams(request)
        return qs if led is None else qs.filter(team_id__in=led)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """A lead's team choices are their teams: a form posted with another team is refused."""
        led = led_teams(request)
        if led is not None and db_field.name == "team":
            kwargs["queryset"] = Team.objects.filter(pk__in=led)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
