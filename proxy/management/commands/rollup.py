import datetime as dt

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.translation import gettext as _

from audit.context import Actor, acting
from proxy.models import RequestLog
from proxy.usage import rollup


class Command(BaseCommand):
    help = _("Recompute the hourly usage roll-up from the request log (after an import or downtime).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, default=0, help=_("Only the last this many days (default: the whole log).")
        )

    def handle(self, *args: object, **options: object) -> None:
        newest = RequestLog.objects.order_by("-created_at").values_list("created_at", flat=True).first()
        # The current hour too (it is rebuilt whole), and any row stamped later by a clock ahead of ours.
        end = max(timezone.now(), newest or timezone.now()) + dt.timedelta(hours=1)
        days = int(options["days"])  # type: ignore[arg-type]
        if days:
            start = end - dt.timedelta(days=days)
        else:
            oldest = RequestLog.objects.order_by("created_at").values_list("created_at", flat=True).first()
            start = oldest or end
        with acting(Actor("manage.py rollup", "command")):
            day, cells = start, 0
            while day < end:  # a day per transaction: the writer never waits long on the table
                cells += rollup.rebuild(day, min(day + dt.timedelta(days=1), end))
                day += dt.timedelta(days=1)
        self.stdout.write(_("Wrote %(cells)d roll-up cells.") % {"cells": cells})
