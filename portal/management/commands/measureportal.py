"""Time the portal's pages on the request log as it is (after ``filllogs``): a scratch database only, it
makes the owner of the busiest key the lead of its team."""

from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from django.utils.translation import gettext as _

from identity.models import Membership, Role
from proxy.models import ApiKey, Team, UsageDay


class Command(BaseCommand):
    help = _(
        "Time the portal's pages on the request log as it is (run after filllogs, on a scratch database)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=5, help=_("Requests per page."))

    def handle(self, *args: Any, **options: Any) -> None:
        user, team = self.prepare()
        client = Client(HTTP_HOST="127.0.0.1")
        client.force_login(user)
        pages = [
            ("my teams", "/portal/"),
            ("my keys", "/portal/keys/"),
            ("my usage", "/portal/usage/"),
            ("my requests (CSV)", "/portal/usage.csv"),
            ("a lead's team page", f"/portal/teams/{team.pk}/"),
        ]
        for label, url in pages:
            walls, cpus = [], []
            for _run in range(int(options["runs"])):
                started, cpu = time.perf_counter(), time.process_time()
                response = client.get(url)
                if response.streaming:
                    b"".join(response.streaming_content)
                if response.status_code != 200:
                    raise CommandError(f"{url}: {response.status_code}")
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu)
            self.stdout.write(
                f"{label}: median {statistics.median(walls) * 1000:.0f} ms, best {min(walls) * 1000:.0f} ms "
                f"({statistics.median(cpus) * 1000:.0f} ms CPU)"
            )

    def prepare(self) -> tuple[Any, Team]:
        """The owner of the busiest key of the last 30 days, made the lead of its team: the heaviest
        person's pages."""
        since = timezone.now().date() - dt.timedelta(days=29)
        busiest = (
            UsageDay.objects.filter(day__gte=since)
            .exclude(api_key_id=0)
            .values("api_key_id")
            .annotate(n=Sum("turns"))
            .order_by("-n")
            .first()
        )
        key = ApiKey.objects.filter(pk=busiest["api_key_id"]).first() if busiest else None
        if key is None or key.owner is None or key.team is None:
            raise CommandError(_("No keys: run filllogs first."))
        team = key.team
        Membership.objects.update_or_create(user=key.owner, team=team, defaults={"role": Role.LEAD})
        with connection.cursor() as cursor:  # as a deployment's database would have them
            cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
        return key.owner, team
