from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from proxy.models import ApiKey


class Command(BaseCommand):
    help = _("Create a Sluice API key; the key is printed alone on the last line and never shown again.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--user", help=_("Owner's username (default: the first superuser)."))

    def handle(self, *args: object, **options: object) -> None:
        User = get_user_model()
        if options["user"]:
            owner, _created = User.objects.get_or_create(username=options["user"])
        else:
            owner = User.objects.filter(is_superuser=True).order_by("pk").first()
            if owner is None:
                owner, _created = User.objects.get_or_create(username="sluice")
        if not owner.is_active:
            raise CommandError(_("User %(user)s is not active.") % {"user": owner.username})
        key = ApiKey(name=options["name"], owner=owner)
        raw = key.generate()
        key.save()
        self.stdout.write(
            _("Created API key “%(name)s” (%(prefix)s…) for %(user)s.")
            % {"name": key.name, "prefix": key.prefix, "user": owner.username}
        )
        self.stdout.write(raw)
