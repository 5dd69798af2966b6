from typing import Any

from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _

from audit.chain import verify


class Command(BaseCommand):
    help = _("Recompute the audit log's hash chain; exit 1 naming the first edited or removed row.")

    def handle(self, *args: Any, **options: Any) -> None:
        found = verify()
        if found is None:
            self.stdout.write(_("The audit log is intact."))
            return
        messages = {
            "edited": _("Audit row %(seq)d was edited."),
            "removed": _("Audit row %(seq)d was removed (the rows after it no longer follow the chain)."),
            "removed-last": _("Audit row %(seq)d, the last one written, was removed."),
        }
        self.stderr.write(messages[found.kind] % {"seq": found.seq})
        raise SystemExit(1)
