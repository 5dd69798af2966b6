import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _

from audit.models import FIELDS, AuditEvent


def parse_since(value: str) -> dt.datetime:
    """An ISO date or time, or a span back from now: 30m, 12h, 7d."""
    if value[:-1].isdigit() and value[-1:] in ("m", "h", "d"):
        unit = {"m": "minutes", "h": "hours", "d": "days"}[value[-1]]
        return timezone.now() - dt.timedelta(**{unit: int(value[:-1])})
    when = parse_datetime(value)
    if when is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(_("--since takes a date, a time or a span such as 7d, 12h or 30m."))
        when = dt.datetime.combine(day, dt.time())
    return when if timezone.is_aware(when) else timezone.make_aware(when, dt.UTC)


class Command(BaseCommand):
    help = _("Print the audit log, oldest first.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help=_("A date, a time or a span back from now (7d, 12h, 30m)."))
        parser.add_argument("--json", action="store_true", help=_("One JSON object per line."))

    def handle(self, *args: Any, **options: Any) -> None:
        rows = AuditEvent.objects.order_by("seq")
        if options["since"]:
            rows = rows.filter(time__gte=parse_since(options["since"]))
        for row in rows.values(*FIELDS).iterator(chunk_size=2000):
            row["time"] = row["time"].astimezone(dt.UTC).isoformat()
            if options["json"]:
                self.stdout.write(json.dumps(row, ensure_ascii=False, sort_keys=True))
            else:
                changes = json.dumps(row["changes"], ensure_ascii=False) if row["changes"] else ""
                self.stdout.write(
                    f"{row['time']} {row['actor']} ({row['source']}) {row['action']} "
                    f"{row['object_type']} {row['object_id']} {row['object_label']} {changes}".rstrip()
                )
