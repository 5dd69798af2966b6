from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import quote as urlquote

from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from providers.widgets import ModelListField
from proxy.admin import dashboard  # noqa: F401 - provider_admin registers the providers' pages
from proxy.admin import limits as admin_limits  # noqa: F401 - provider_admin registers the providers' pages
from proxy.admin import providers as provider_admin  # noqa: F401 - provider_admin registers the providers' pages
from proxy.admin.records import KeepsRecordAdmin
from proxy.admin.sessions import sessions_view
from proxy.governance import limits  # noqa: F401 - provider_admin registers the providers' pages
from proxy.models import ApiKey, ModelPrice, RequestLog, Team, Usage
from proxy.templatetags.sluice_money import money


def led_teams(request: HttpRequest) -> list[int] | None:
    """The ids of the teams a staff member who is not a superuser leads (a membership with the role
    "lead"): the admin and the dashboard show them only those teams' objects. None: not scoped (a
    superuser, or staff who lead no team, whose view is what their permissions give)."""
    if not hasattr(request, "_sluice_led"):
        user = request.user
        led = None
        if user.is_authenticated and not user.is_superuser:
            # Through the reverse relation of the identity app's memberships: proxy never imports it.
            ids = Team.objects.filter(memberships__user=user, memberships__role="lead").values_list("pk")
            led = sorted({pk for (pk,) in ids}) or None
        request._sluice_led = led  # type: ignore[attr-defined]
    return request._sluice_led  # type: ignore[attr-defined]


class LedTeamsFilter(admin.RelatedFieldListFilter):
    """A key or team filter of the request log offering only the teams' own keys and teams to a lead."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        led = led_teams(request)
        if led is None:
            return super().field_choices(field, request, model_admin)
        if field.related_model is Team:
            scope: dict[str, Any] = {"pk__in": led}
        elif field.related_model is ApiKey:
            scope = {"team_id__in": led}
        else:  # people: the teams' members
            members = field.related_model.objects.filter(memberships__team_id__in=led).values("pk")
            scope = {"pk__in": members}
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, ordering=ordering, limit_choices_to=scope)


# Each limit on a row of its own, with what is used of it right now beside it.
LIMIT_ROWS = (
    ("rpm", "requests_now"),
    ("tpm", "tokens_now"),
    ("concurrency", "in_flight_now"),
    ("sockets", "sockets_now"),
    ("daily_budget", "spend_today"),
    ("monthly_budget", "spend_this_month"),
    "allowed_models",
)
USAGE_FIELDS = (
    "requests_now",
    "tokens_now",
    "in_flight_now",
    "sockets_now",
    "spend_today",
    "spend_this_month",
)


class GroupListField(ModelListField):
    """Group names, one per line: any text an identity provider names a group with."""

    def validate(self, value: list[str]) -> None:
        if any(len(name) > 255 for name in value):
            raise ValidationError(_("A group name has at most 255 characters."))


class LedTeamsOnly:
    """For the admin of a model whose rows belong to a team: a team lead (staff, not a superuser) sees,
    changes and adds only their teams' rows, and a form posted with another team is refused."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)  # type: ignore[misc]
        led = led_teams(request)
        return qs if led is None else qs.filter(team_id__in=led)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        led = led_teams(request)
        if led is not None and db_field.name == "team":
            kwargs["queryset"] = Team.objects.filter(pk__in=led)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


class LimitsAdmin(admin.ModelAdmin):
    """Limits beside their current usage, read from the counters admission checks against."""

    scope_prefix = ""

    class Media:
        css = {"all": ("sluice/limits.css", "sluice/lists.css")}

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Allowed models as a list of names, one per line, like a provider's (not a JSON text)."""
        if db_field.name == "allowed_models":
            return ModelListField(
                label=capfirst(db_field.verbose_name),
                required=False,
                help_text=_("One model name per line. Empty: every model the providers serve."),
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def _usage(self, obj: Any) -> limits.Usage | None:
        if obj is None or obj.pk is None or limits.quota_of("", "", obj) is None:
            return None  # nothing is counted for a key or team without a limit
        if getattr(obj, "_usage", None) is None:
            obj._usage = limits.usage(f"{self.scope_prefix}{obj.pk}")
        return obj._usage

    def _count(self, obj: Any, attribute: str) -> str:
        usage = self._usage(obj)
        return "—" if usage is None else grouped(getattr(usage, attribute))

    def _spend(self, obj: Any, attribute: str) -> str:
        """From the request log: spend is shown whether or not a budget counts it."""
        if obj is None or obj.pk is None:
            return "—"
        column = "team_id" if isinstance(obj, Team) else "api_key_id"
        day, month = admin_limits.spend(column, [obj.pk])[obj.pk]
        return money(day if attribute == "day" else month)

    @admin.display(description=_("effective limits"))
    def effective_limits(self, obj: Any) -> str:
        if obj is None or obj.pk is None:
            return "—"
        if isinstance(obj, Team):
            return admin_limits.table(None, obj)
        return admin_limits.table(obj, obj.team)

    @admin.display(description=_("requests this minute"))
    def requests_now(self, obj: Any) -> str:
        return self._count(obj, "requests")

    @admin.display(description=_("tokens this minute"))
    def tokens_now(self, obj: Any) -> str:
        return self._count(obj, "tokens")

    @admin.display(description=_("turns in flight now"))
    def in_flight_now(self, obj: Any) -> str:
        return self._count(obj, "slots")

    @admin.display(description=_("open WebSocket connections now"))
    def sockets_now(self, obj: Any) -> str:
        if self._usage(obj) is None:
            return "—"
        return grouped(limits.open_sockets(f"{self.scope_prefix}{obj.pk}"))

    @admin.display(description=_("spent today"))
    def spend_today(self, obj: Any) -> str:
        return self._spend(obj, "day")

    @admin.display(description=_("spent this month"))
    def spend_this_month(self, obj: Any) -> str:
        return self._spend(obj, "month")


@admin.register(Team)
class TeamAdmin(KeepsRecordAdmin, LimitsAdmin):
    scope_prefix = "t"
    list_display = (
        "name",
        "enabled",
        "rpm",
        "concurrency",
        "daily_budget",
        "monthly_budget",
        "spend_today",
        "keys",
    )
    list_filter = ("enabled",)
    search_fields = ("name",)
    fieldsets = (
        (None, {"fields": ("name", "enabled")}),
        (_("People from the identity provider"), {"fields": ("idp_groups", "lead_idp_groups")}),
        (_("What limits it now"), {"fields": ("effective_limits",)}),
        (_("Limits (blank: no limit)"), {"fields": LIMIT_ROWS, "classes": ("sluice-limits",)}),
        (_("Portal"), {"fields": ("self_service", "max_keys_per_user", "key_max_days")}),
    )
    readonly_fields = ("effective_limits", *USAGE_FIELDS)

    def get_queryset(self, request: HttpRequest) -> Any:
        qs = super().get_queryset(request).annotate(key_count=Count("keys"))
        led = led_teams(request)
        return qs if led is None else qs.filter(pk__in=led)

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Identity provider groups as names, one per line (not a JSON text)."""
        if db_field.name in ("idp_groups", "lead_idp_groups"):
            return GroupListField(
                label=capfirst(db_field.verbose_name), required=False, help_text=_("One group name per line.")
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def rows_of(self, pk: Any) -> Q:
        return Q(team=pk)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        """A title of its own, translated as a whole: the admin's "Change %s" puts the name in the wrong case
        in Russian ("Изменить команда")."""
        title = _("Change team") if self.has_change_permission(request) else _("View team")
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "title": title})

    @admin.display(description=_("keys"), ordering="key_count")
    def keys(self, obj: Team) -> int:
        return obj.key_count  # type: ignore[attr-defined]


@admin.register(ApiKey)
class ApiKeyAdmin(LedTeamsOnly, KeepsRecordAdmin, LimitsAdmin):
    scope_prefix = "k"
    list_display = (
        "name",
        "prefix",
        "owner",
        "team",
        "serving",
        "spent_today_of",
        "spent_month_of",
        "last_used_at",
    )
    list_filter = (
        "enabled",
        ("team", admin.RelatedOnlyFieldListFilter),
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("owner", "team")
    search_fields = ("name", "prefix", "owner__username", "team__name")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "owner",
                    "team",
                    "enabled",
                    "expires_at",
                    "prefix",
                    "created_at",
                    "last_used_at",
                )
            },
        ),
        (_("What limits it now"), {"fields": ("effective_limits",)}),
        (
            _("Limits (blank: no limit; the team's limits apply too)"),
            {"fields": LIMIT_ROWS, "classes": ("sluice-limits",)},
        ),
    )
    readonly_fields = ("prefix", "created_at", "last_used_at", "effective_limits", *USAGE_FIELDS)

    def rows_of(self, pk: Any) -> Q:
        return Q(api_key=pk)

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # The list's columns need the navigation sidebar's width to fit 1280 px beside the filters.
        extra = {**(extra_context or {}), "is_nav_sidebar_enabled": False}
        return super().changelist_view(request, extra)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """The page's keys' spend in one query of the log."""
        cl = super().get_changelist_instance(request)
        keys = list(cl.result_list)
        spent = admin_limits.spend("api_key_id", [k.pk for k in keys])
        for key in keys:
            key._spent = spent[key.pk]  # type: ignore[attr-defined]
        return cl

    @admin.display(description=_("serving"), boolean=True)
    def serving(self, obj: ApiKey) -> bool:
        """Enabled, and nothing above it says no: its team enabled, its owner active, not expired."""
        team_on = obj.team is None or obj.team.enabled
        return obj.enabled and team_on and obj.owner.is_active and not obj.is_expired

    @admin.display(description=_("spent today"))
    def spent_today_of(self, obj: ApiKey) -> str:
        day = obj._spent[0]  # type: ignore[attr-defined]
        return admin_limits.budget_cell(day, obj.daily_budget, obj.team.daily_budget if obj.team else None)

    @admin.display(description=_("spent this month"))
    def spent_month_of(self, obj: ApiKey) -> str:
        month = obj._spent[1]  # type: ignore[attr-defined]
        team = obj.team.monthly_budget if obj.team else None
        return admin_limits.budget_cell(month, obj.monthly_budget, team)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        """The model list's help says what an empty list means for this key: its team's models, if the
        team restricts them."""
        form = super().get_form(request, obj, change, **kwargs)
        field = form.base_fields.get("allowed_models")
        team = obj.team if obj is not None else None
        if field is not None and team is not None and team.allowed_models:
            field.help_text = _(
                "One model name per line. Empty: the models its team allows (%(models)s)."
            ) % {"models": ", ".join(team.allowed_models)}
        return form

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """A lead gives keys only to their teams (``LedTeamsOnly``) and to those teams' people."""
        led = led_teams(request)
        if led is not None and db_field.name == "owner":
            people = db_field.related_model.objects.filter(memberships__team_id__in=led)
            kwargs["queryset"] = people.distinct()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """A new key belongs to whoever creates it unless another owner is chosen."""
        return {"owner": request.user.pk, **super().get_changeform_initial_data(request)}

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        if not change:
            request._sluice_new_key = obj.generate()  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the new secret once, on a page of its own; it is stored only as a hash."""
        raw = getattr(request, "_sluice_new_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "key": obj,
            "secret": raw,
            "title": _("New API key"),
        }
        response = TemplateResponse(request, "admin/proxy/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_million", "cached_input_per_million", "output_per_million")
    search_fields = ("model",)


class StatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status_class"
    CLASSES = {
        "ok": (_("Success (2xx)"), {"status__lt": 400}),
        "refused": (_("Refused by the gateway"), {"status__gte": 400, "provider__isnull": True}),
        "client": (
            _("Upstream client errors (4xx)"),
            {"status__gte": 400, "status__lt": 500, "provider__isnull": False},
        ),
        "server": (_("Upstream failures (5xx)"), {"status__gte": 500, "provider__isnull": False}),
    }

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _q) in self.CLASSES.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        chosen = self.CLASSES.get(self.value() or "")
        return queryset.filter(**chosen[1]) if chosen else queryset


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    # Fits 1280 px: the rest of a row is on its detail page.
    list_display = (
        "time",
        "key",
        "model_name",
        "status_code",
        "tokens",
        "cost_usd",
        "transports",
        "ttfe",
        "session",
    )
    # No filter here reads the log to offer its choices (a DISTINCT over a million rows takes seconds):
    # fixed status classes, choices of the fields, the providers and keys from their own tables.
    list_filter = (
        ("created_at", admin.DateFieldListFilter),
        StatusFilter,
        "client_transport",
        "upstream_transport",
        "fallback_reason",
        ("provider", admin.RelatedFieldListFilter),
        ("api_key", LedTeamsFilter),
        ("owner", LedTeamsFilter),
        ("team", LedTeamsFilter),
        "endpoint",
    )
    search_fields = (
        "response_id",
        "requested_model",
        "upstream_model",
        "error_code",
        "session_id",
        "trace_id",
    )
    list_select_related = ("api_key", "owner")

    class Media:
        css = {"all": ("sluice/lists.css",)}

    list_per_page = 50
    list_display_links = ("time",)
    actions = None  # rows leave by retention (prunelogs), not by hand
    show_full_result_count = False  # counting a million rows on every page costs more than the page
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "created_at",
                    "api_key",
                    "owner",
                    "team",
                    "provider",
                    "endpoint_name",
                    "status",
                    "error",
                )
            },
        ),
        (_("Model"), {"fields": ("requested_model", "upstream_model")}),
        (
            _("Usage"),
            {
                "fields": (
                    "input_tokens",
                    "cached_input_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                    "cost_usd",
                )
            },
        ),
        (
            _("Transport"),
            {
                "fields": (
                    "client_transport",
                    "upstream_transport",
                    "fallback_reason",
                    "handshake_shown",
                    "upstream_ws_url",
                    "first_event_shown",
                    "duration_shown",
                )
            },
        ),
        (_("Identifiers"), {"fields": ("response_id", "session_id", "trace_id")}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # the record of spend: rows leave by retention (prunelogs) only

    def get_queryset(self, request: HttpRequest) -> QuerySet[RequestLog]:
        qs = super().get_queryset(request)
        led = led_teams(request)
        return qs if led is None else qs.filter(team_id__in=led)

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f for fs in self.fieldsets for f in fs[1]["fields"]]

    @admin.display(description=_("endpoint"))
    def endpoint_name(self, obj: RequestLog) -> str:
        return obj.get_endpoint_display()

    @admin.display(description=_("error"))
    def error(self, obj: RequestLog) -> str:
        return obj.error_label or "—"

    @admin.display(description=_("time"), ordering="created_at")
    def time(self, obj: RequestLog) -> str:
        return formats.date_format(timezone.localtime(obj.created_at), "DATETIME_FORMAT")

    @admin.display(description=_("API key / owner"), ordering="api_key__name")
    def key(self, obj: RequestLog) -> str:
        name = obj.api_key.name if obj.api_key else "—"
        return format_html('{}<br><small class="sluice-owner">{}</small>', name, obj.owner or "—")

    @admin.display(description=_("session"))
    def session(self, obj: RequestLog) -> str:
        if not obj.session_id:
            return "—"
        # Its end: Codex's session ids are UUIDv7, whose beginnings (a time) are alike within the hour.
        short = obj.session_id if len(obj.session_id) <= 8 else "…" + obj.session_id[-6:]
        return format_html(
            '<a href="?session_id={}" title="{}">{}</a>', urlquote(obj.session_id), obj.session_id, short
        )

    def get_urls(self) -> list:
        sessions = self.admin_site.admin_view(lambda request: sessions_view(self, request))
        return [path("sessions/", sessions, name="proxy_requestlog_sessions"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        # The table needs the width the navigation sidebar would take to fit 1280 px with its filters.
        extra = {**(extra_context or {}), "is_nav_sidebar_enabled": False}
        return super().changelist_view(request, extra)

    @admin.display(description=_("model"), ordering="upstream_model")
    def model_name(self, obj: RequestLog) -> str:
        return obj.upstream_model or obj.requested_model or "—"

    @admin.display(description=_("status"), ordering="status")
    def status_code(self, obj: RequestLog) -> str:
        if obj.error_code:
            return format_html('<span title="{}">{}</span>', obj.error_label, obj.status)
        return str(obj.status)

    @admin.display(description=_("tokens in / out"))
    def tokens(self, obj: RequestLog) -> str:
        return format_html("{} /<br>{}", grouped(obj.input_tokens), grouped(obj.output_tokens))

    @admin.display(description=_("cost (USD)"), ordering="cost")
    def cost_usd(self, obj: RequestLog) -> str:
        if obj.cost is None and (obj.input_tokens or obj.output_tokens):
            return str(_("price unknown"))  # the model has no price: not a cost of 0
        return money(obj.cost) if obj.cost is not None else "—"

    @admin.display(description=_("transports"))
    def transports(self, obj: RequestLog) -> str:
        upstream = obj.get_upstream_transport_display() or "—"
        label = f"{obj.get_client_transport_display()} → {upstream}"
        if obj.fallback_reason:
            return format_html('<span title="{}">{} *</span>', obj.get_fallback_reason_display(), label)
        return label

    @admin.display(description=_("first event"), ordering="time_to_first_event_ms")
    def ttfe(self, obj: RequestLog) -> str:
        if obj.time_to_first_event_ms is None:
            return "—"
        return _("%(ms)s ms") % {"ms": grouped(obj.time_to_first_event_ms, 0)}

    # The detail page's timings, to a tenth of a millisecond rather than a float's every digit.
    @admin.display(description=RequestLog._meta.get_field("ws_handshake_ms").verbose_name)
    def handshake_shown(self, obj: RequestLog) -> str:
        return milliseconds(obj.ws_handshake_ms)

    @admin.display(description=RequestLog._meta.get_field("time_to_first_event_ms").verbose_name)
    def first_event_shown(self, obj: RequestLog) -> str:
        return milliseconds(obj.time_to_first_event_ms)

    @admin.display(description=RequestLog._meta.get_field("duration_ms").verbose_name)
    def duration_shown(self, obj: RequestLog) -> str:
        return milliseconds(obj.duration_ms)


def milliseconds(value: float | None) -> str:
    return "—" if value is None else grouped(value, 1)


def grouped(value: float | int, places: int | None = None) -> str:
    """A count or measure in the admin's language: its digit grouping and decimal separator (rounded half
    up, as a reader expects: 4.95 shows as 5.0)."""
    if places is not None:
        value = Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)  # type: ignore[assignment]
    return formats.number_format(value, places, force_grouping=True)


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    """The usage dashboard, listed on the admin index; its list page is the dashboard."""

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm("proxy.view_requestlog")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        filters = dashboard.parse_filters(request.GET)
        filters.teams = led_teams(request)
        export = request.GET.get("export")
        if export == "rows":
            return dashboard.rows_csv(filters)
        if export == "chargeback":
            period = "month" if request.GET.get("period") == "month" else "day"
            return dashboard.chargeback_csv(filters, period)
        usage = dashboard.usage(filters)
        if export == "aggregates":
            return dashboard.aggregates_csv(usage)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Usage dashboard"),
            **dashboard.render_context(request, usage),
        }
        return TemplateResponse(request, "admin/proxy/usage/dashboard.html", context)
