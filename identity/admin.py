from django.contrib import admin
from django.http import HttpRequest

from identity.models import BreakGlass, Membership, OidcSubject
from proxy.admin.modeladmins import LedTeamsFilter, LedTeamsOnly


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
class MembershipAdmin(LedTeamsOnly, admin.ModelAdmin):
    """People in teams: a lead sees the team's people, usage and keys in the portal. Memberships from the
    identity provider are set again at each sign-in; those set here by hand stay."""

    list_display = ("user", "team", "role", "source", "created_at")
    list_filter = ("role", "source", ("team", LedTeamsFilter))
    search_fields = ("user__username", "user__email", "team__name")
    autocomplete_fields = ("user", "team")
    readonly_fields = ("source", "created_at")
