import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from proxy.models import LatencyDay, RequestLog, UsageDay, UsageHour
from proxy.usage import rollup
from proxy.usage.batches import BATCH, delete_in_batches


def prune(older_than_days: int, batch: int = BATCH) -> int:
    """Delete request-log rows older than the given number of days, a batch per short transaction so the
    log writer never waits long for the table."""
    cutoff = timezone.now() - dt.timedelta(days=older_than_days)
    deleted = delete_in_batches(RequestLog.objects.filter(created_at__lt=cutoff).order_by(), batch)
    with transaction.atomic():
        # The roll-ups forget the same days; the day the cutoff falls in is summed again.
        day = cutoff.astimezone(dt.UTC).date()
        UsageHour.objects.filter(hour__lt=dt.datetime.combine(day, dt.time.min, dt.UTC)).delete()
        UsageDay.objects.filter(day__lt=day).delete()
        LatencyDay.objects.filter(day__lt=day).delete()
        rollup.rebuild(day, day)
    return deleted


class Command(BaseCommand):
    help = _("Delete request-log rows older than the retention period (SLUICE_LOG_RETENTION_DAYS).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="DAYS",
            help=_("Delete rows older than this many days (default: SLUICE_LOG_RETENTION_DAYS)."),
        )

    def handle(self, *args: object, **options: object) -> None:
        days = options["older_than"]
        days = settings.SLUICE_LOG_RETENTION_DAYS if days is None else int(days)  # type: ignore[arg-type]
        deleted = prune(days)
        self.stdout.write(
            _("Deleted %(count)d request-log rows older than %(days)d days.")
            % {"count": deleted, "days": days}
        )
