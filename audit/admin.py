"""The audit log and the alerts in the admin: read-only log rows (no add, change or delete for anyone),
filters, CSV export, a history link from every audited object's page, and the alert channels."""

from __future__ import annotations

import csv
import json
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from audit import alerts
from audit.models import FIELDS, AlertChannel, AlertDelivery, AuditEvent, TeamAlertPolicy

CSV_FIELDS = (*FIELDS, "hash")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the gateway writes: nobody adds, changes or deletes them here, superusers included."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _cell(value: object) -> object:
    """A text a spreadsheet would run as a formula (a label or name someone chose) is quoted."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class _Echo:
    def write(self, value: str) -> str:
        return value


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "actor", "source", "action", "object_type", "object_label", "client_ip")
    list_filter = ("source", "action", "object_type", ("time", admin.DateFieldListFilter), "actor")
    search_fields = ("actor", "object_label", "object_id", "request_id", "client_ip")
    date_hierarchy = "time"
    change_list_template = "admin/audit/auditevent/change_list.html"
    fields = (*CSV_FIELDS[:9], "changes_shown", "client_ip", "request_id", "prev_hash", "hash")
    readonly_fields = fields

    @admin.display(description=_("changes"))
    def changes_shown(self, obj: AuditEvent) -> str:
        return json.dumps(obj.changes, ensure_ascii=False, indent=1)

    def get_urls(self) -> list[Any]:
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="audit_auditevent_export"), *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> HttpResponse:
        """The rows the change list shows with the same filters and search, all of them, as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        rows = self.get_changelist_instance(request).get_queryset(request).order_by("seq")
        writer = csv.writer(_Echo())

        def lines() -> Any:
            yield writer.writerow(CSV_FIELDS)
            for row in rows.values_list(*CSV_FIELDS).iterator(chunk_size=2000):
                values = list(row)
                values[CSV_FIELDS.index("changes")] = json.dumps(values[9], ensure_ascii=False)
                yield writer.writerow([_cell(v) for v in values])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit.csv"'
        return response


def history_link(model_admin: admin.ModelAdmin) -> None:
    """An audited model's "History" button opens its rows of the audit log (which, unlike the admin's
    own history, also holds changes made by commands, sign-ins and the gateway)."""
    label = model_admin.model._meta.label

    def history_view(request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        query = urlencode({"object_type__exact": label, "object_id__exact": object_id})
        return HttpResponseRedirect(f"{reverse('admin:audit_auditevent_changelist')}?{query}")

    model_admin.history_view = history_view  # type: ignore[method-assign]


class AlertChannelForm(forms.ModelForm):
    url = forms.CharField(
        label=capfirst(_("Apprise URL")),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_(
            "For example slack://…, msteams://…, mailto://user:password@host?to=…, json://host/path. Stored "
            "encrypted and never shown again. Leave blank to keep the current URL."
        ),
    )

    class Meta:
        model = AlertChannel
        fields = ("name", "enabled", "teams")

    def clean_url(self) -> str:
        url = self.cleaned_data.get("url", "")
        if not url:
            if not self.instance.url_encrypted:
                raise forms.ValidationError(_("A new channel needs a URL."))
            return url
        reason = alerts.parse_error(url)
        if reason:
            raise forms.ValidationError(_("Apprise cannot use this URL: %(reason)s") % {"reason": reason})
        return url

    def save(self, commit: bool = True) -> AlertChannel:
        channel = super().save(commit=False)
        if self.cleaned_data.get("url"):
            channel.set_url(self.cleaned_data["url"])
            channel.url_hint = alerts.masked(self.cleaned_data["url"])
        if commit:
            channel.save()
            self.save_m2m()
        return channel


@admin.register(AlertChannel)
class AlertChannelAdmin(admin.ModelAdmin):
    form = AlertChannelForm
    list_display = ("name", "url_hint", "enabled", "team_names")
    readonly_fields = ("url_hint",)
    fields = ("name", "url_hint", "url", "enabled", "teams")
    filter_horizontal = ("teams",)
    actions = ("send_test",)

    @admin.display(description=_("teams"))
    def team_names(self, obj: AlertChannel) -> str:
        return ", ".join(t.name for t in obj.teams.all()) or gettext("all")

    @admin.action(description=_("Send a test alert"))
    def send_test(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        """Delivered at once, one attempt each, so the result shows on the page."""
        alert = alerts.Alert(
            "test", gettext("Sluice: test alert"), gettext("This channel receives Sluice's alerts.")
        )
        for channel in queryset:
            target = alerts.Channel(channel.name, channel.url)
            delivery = alerts.deliver(target, alert, attempts=1)
            values = {"name": channel.name, "error": delivery.error}
            if delivery.error:
                self.message_user(request, gettext("“%(name)s”: failed: %(error)s") % values, messages.ERROR)
            else:
                self.message_user(request, gettext("“%(name)s”: test alert sent.") % values)


@admin.register(TeamAlertPolicy)
class TeamAlertPolicyAdmin(admin.ModelAdmin):
    list_display = ("team", "thresholds")


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("time", "channel", "event", "title", "status", "attempts", "error")
    list_filter = ("status", "event", "channel", ("time", admin.DateFieldListFilter))
    search_fields = ("title", "error")
