import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.chain import prune


class Command(BaseCommand):
    help = _(
        "Delete audit rows older than the retention period (SLUICE_AUDIT_RETENTION_DAYS); the chain stays "
        "verifiable from the last deleted row's hash."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="DAYS",
            help=_("Delete rows older than this many days (default: SLUICE_AUDIT_RETENTION_DAYS)."),
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than"]
        days = settings.SLUICE_AUDIT_RETENTION_DAYS if days is None else int(days)
        deleted = prune(timezone.now() - dt.timedelta(days=days))
        self.stdout.write(
            _("Deleted %(count)d audit rows older than %(days)d days.") % {"count": deleted, "days": days}
        )
