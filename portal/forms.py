"""The portal's forms: a new key (checked against the team's policy), a rotation."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from portal import policy, queries
from proxy.models import Team

MAX_GRACE_HOURS = 24


class KeyForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100)
    team = forms.ModelChoiceField(label=_("Team"), queryset=Team.objects.none(), empty_label=None)
    days = forms.IntegerField(
        label=_("Expires after (days)"),
        required=False,
        min_value=1,
        help_text=_("Blank: the team's longest lifetime."),
    )
    rpm = forms.IntegerField(label=_("Requests per minute"), required=False, min_value=1)
    tpm = forms.IntegerField(label=_("Tokens per minute"), required=False, min_value=1)
    concurrency = forms.IntegerField(label=_("Turns in flight"), required=False, min_value=1)
    sockets = forms.IntegerField(label=_("Open WebSocket connections"), required=False, min_value=1)
    daily_budget = forms.DecimalField(
        label=_("Daily budget (USD)"), required=False, min_value=0, max_digits=12, decimal_places=2
    )
    monthly_budget = forms.DecimalField(
        label=_("Monthly budget (USD)"), required=False, min_value=0, max_digits=12, decimal_places=2
    )
    models = forms.CharField(
        label=_("Models"),
        required=False,
        help_text=_("Comma-separated; blank: every model the team may use."),
    )

    def __init__(self, user: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        # Only the person's own teams: another team's id is "not one of the available choices".
        self.fields["team"].queryset = Team.objects.filter(memberships__user=user).order_by("name")

    def clean_models(self) -> list[str]:
        return [m.strip() for m in self.cleaned_data["models"].split(",") if m.strip()]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team = data.get("team")
        if team is None or self.errors:
            return data
        wanted = policy.KeyRequest(
            days=data.get("days"),
            **{name: data.get(name) for name in policy.LIMIT_FIELDS},
            models=data.get("models") or [],
        )
        for field_name, message in policy.check(team, wanted, queries.keys_held(self.user, team)).items():
            self.add_error(field_name or None, message)
        return data


class RotateForm(forms.Form):
    grace_hours = forms.IntegerField(
        label=_("Keep the old key working for (hours)"),
        min_value=0,
        max_value=MAX_GRACE_HOURS,
        initial=1,
    )
