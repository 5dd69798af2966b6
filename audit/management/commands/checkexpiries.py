from typing import Any

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from audit.events import expiring_keys


class Command(BaseCommand):
    help = _(
        "Alert once about each API key expiring within 7 days, and record keys whose expiry passed "
        "(run it from a timer, e.g. hourly)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        sent, expired = expiring_keys()
        self.stdout.write(
            _("%(sent)d expiry alerts sent, %(expired)d expired keys recorded.")
            % {"sent": sent, "expired": expired}
        )
