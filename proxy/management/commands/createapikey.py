from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from proxy.management.limit_options import add_limit_arguments, apply_limits, validated
from proxy.models import ApiKey, Team


class Command(BaseCommand):
    help = _("Create a Sluice API key; the key is printed alone on the last line and never shown again.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--user", help=_("Owner's username (default: the first superuser)."))
        parser.add_argument(
            "--create-user",
            action="store_true",
            help=_("Create the user given with --user if it does not exist."),
        )
        parser.add_argument("--team", help=_("The team the key belongs to (it must exist)."))
        add_limit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        if options["user"]:
            owner = User.objects.filter(username=options["user"]).first()
            if owner is None:
                if not options["create_user"]:
                    raise CommandError(
                        _("User %(user)s does not exist; pass --create-user to create it.")
                        % {"user": options["user"]}
                    )
                owner = User.objects.create(username=options["user"])
        else:
            owner = User.objects.filter(is_superuser=True).order_by("pk").first()
            if owner is None:
                owner, _created = User.objects.get_or_create(username="sluice")
        if not owner.is_active:
            raise CommandError(_("User %(user)s is not active.") % {"user": owner.username})
        team = None
        if options["team"]:
            team = Team.objects.filter(name=options["team"]).first()
            if team is None:
                raise CommandError(
                    _("Team %(team)s does not exist; create it with createteam.") % {"team": options["team"]}
                )
        key = ApiKey(name=options["name"], owner=owner, team=team)
        apply_limits(key, options)
        raw = key.generate()
        validated(key)
        key.save()
        self.stdout.write(
            _("Created API key “%(name)s” (%(prefix)s…) for %(user)s.")
            % {"name": key.name, "prefix": key.prefix, "user": owner.username}
        )
        self.stdout.write(raw)
