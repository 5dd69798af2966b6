"""Time the portal's pages on the request log as it is (after ``filllogs``): a scratch database only, it
hands a key and a team to a measuring person."""

from __future__ import annotations

import statistics
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import Client
from django.utils.translation import gettext as _

from identity.models import Membership, Role
from proxy.models import ApiKey, RequestLog, Team

USERNAME = "portal-measure"
TEAM = "portal-measure"


class Command(BaseCommand):
    help = _(
        "Time the portal's pages on the request log as it is (run after filllogs, on a scratch database)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=5, help=_("Requests per page."))
        parser.add_argument("--team-keys", type=int, default=10, help=_("Keys in the measured team."))

    def handle(self, *args: Any, **options: Any) -> None:
        user, team = self.prepare(int(options["team_keys"]))
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

    def prepare(self, team_keys: int) -> tuple[Any, Team]:
        """A person who leads a team of ``team_keys`` generated keys and owns the first of them."""
        keys = list(ApiKey.objects.order_by("pk").values_list("pk", flat=True)[:team_keys])
        if not keys:
            raise CommandError(_("No keys: run filllogs first."))
        user, _created = get_user_model().objects.get_or_create(username=USERNAME)
        team, _created = Team.objects.get_or_create(name=TEAM)
        Membership.objects.update_or_create(user=user, team=team, defaults={"role": Role.LEAD})
        ApiKey.objects.filter(pk__in=keys).update(team=team)
        ApiKey.objects.filter(pk=keys[0]).update(owner=user)
        RequestLog.objects.filter(api_key_id__in=keys, team__isnull=True).update(team=team)
        with connection.cursor() as cursor:  # as a deployment's database would have them
            cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
        return user, team
