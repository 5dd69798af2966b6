from argparse import BooleanOptionalAction
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from proxy.management.limit_options import _count, add_limit_arguments, apply_limits, validated
from proxy.models import Team


def group_list(value: str) -> list[str]:
    """``a, b,,c`` as ``["a", "b", "c"]``; an empty value clears the list."""
    return [name.strip() for name in value.split(",") if name.strip()]


class Command(BaseCommand):
    help = _("Create a team (or update its limits); its keys share the team's limits and budgets.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        add_limit_arguments(parser)
        parser.add_argument("--disabled", action="store_true", help=_("Create the team disabled."))
        parser.add_argument(
            "--idp-groups",
            type=group_list,
            help=_("Identity provider groups whose members belong to the team (comma-separated)."),
        )
        parser.add_argument(
            "--lead-idp-groups",
            type=group_list,
            help=_("Identity provider groups whose members lead the team (comma-separated)."),
        )
        parser.add_argument(
            "--self-service",
            action=BooleanOptionalAction,
            default=None,
            help=_("Whether members may create their own keys in the portal."),
        )
        parser.add_argument("--max-keys-per-user", type=_count, help=_("Most keys per person in the portal."))
        parser.add_argument(
            "--key-max-days",
            type=_count,
            help=_("Longest lifetime of a portal key, in days, at least 1 (default 90)."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name:
            raise CommandError(_("A team needs a name."))
        team = Team.objects.filter(name=name).first()
        created = team is None
        if team is None:
            team = Team(name=name)
        apply_limits(team, options)
        if options["disabled"]:
            team.enabled = False
        if options["idp_groups"] is not None:
            team.idp_groups = options["idp_groups"]
        if options["lead_idp_groups"] is not None:
            team.lead_idp_groups = options["lead_idp_groups"]
        for name in ("self_service", "max_keys_per_user", "key_max_days"):
            if options[name] is not None:
                setattr(team, name, options[name])
        validated(team)
        team.save()
        message = _("Created team “%(name)s”.") if created else _("Updated team “%(name)s”.")
        self.stdout.write(message % {"name": team.name})
