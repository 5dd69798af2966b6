import getpass
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.context import Actor, Source, acting
from identity.models import BreakGlass


class Command(BaseCommand):
    help = _(
        "Let one superuser sign in with a password for a while although password sign-in is off "
        "(for when the identity provider is down)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--minutes", type=int, default=60)

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"], is_superuser=True).first()
        if user is None or not user.is_active:
            raise CommandError(_("No active superuser is called “%(name)s”.") % {"name": options["username"]})
        if not 0 < options["minutes"] <= 24 * 60:
            raise CommandError(_("Break-glass lasts between 1 and 1440 minutes."))
        until = timezone.now() + timedelta(minutes=options["minutes"])
        with acting(Actor(f"cli:{getpass.getuser()}", Source.CLI)):
            BreakGlass.objects.create(user=user, until=until)
        self.stdout.write(
            _("“%(name)s” may sign in with a password until %(until)s.")
            % {"name": user.get_username(), "until": timezone.localtime(until).strftime("%Y-%m-%d %H:%M %Z")}
        )
