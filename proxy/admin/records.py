"""The request log is the record of spend: the admin deletes none of its rows, and a key, team or person
that has rows is deactivated rather than deleted (the database refuses such a delete; the admin says why
and offers deactivation). Also the admin of people, which shows each person's keys."""

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from proxy.models import ApiKey, RequestLog


class KeepsRecordAdmin(admin.ModelAdmin):
    """Deletion refused for objects the request log names; a "deactivate" action instead.

    ``active_field`` is the model's on/off field; ``rows_of`` the request-log rows that name an object."""

    active_field = "enabled"

    def rows_of(self, pk: Any) -> Q:
        raise NotImplementedError

    def with_rows(self, objs: Any) -> QuerySet:
        pks = [o.pk for o in objs]
        rows = RequestLog.objects.filter(self.rows_of(OuterRef("pk")))
        return self.model._default_manager.filter(pk__in=pks).filter(Exists(rows))

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        """An object with rows is listed as protected, by name and once (the database's own answer would
        list every row of the log that names it)."""
        kept = list(self.with_rows(objs))
        if not kept:
            return super().get_deleted_objects(objs, request)
        protected = [
            _("“%(name)s” has request-log rows, the record of spend: deactivate it instead.") % {"name": o}
            for o in kept
        ]
        return [], {}, set(), protected

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if self.has_change_permission(request):
            actions["deactivate"] = self.get_action("deactivate")  # type: ignore[assignment]
        return actions

    @admin.action(description=_("Deactivate selected %(verbose_name_plural)s"))
    def deactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        """One save per object, so that what follows a change (revocation, the audit) follows this too."""
        count = 0
        for obj in queryset.filter(**{self.active_field: True}):
            setattr(obj, self.active_field, False)
            obj.save(update_fields=[self.active_field])
            count += 1
        self.message_user(request, _("%(count)d deactivated.") % {"count": count}, messages.SUCCESS)


class OwnKeysInline(admin.TabularInline):
    """A person's keys on their page, read-only: each links to its own page."""

    model = ApiKey
    fk_name = "owner"
    fields = ("name", "prefix", "team", "enabled", "expires_at", "last_used_at")
    readonly_fields = fields
    show_change_link = True
    extra = 0
    can_delete = False
    verbose_name_plural = _("API keys")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class PersonAdmin(KeepsRecordAdmin, UserAdmin):
    active_field = "is_active"
    inlines = (OwnKeysInline,)

    def rows_of(self, pk: Any) -> Q:
        return Q(owner=pk) | Q(api_key__owner=pk)
