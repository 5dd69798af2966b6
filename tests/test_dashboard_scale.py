"""The usage dashboard and the portal's usage pages on a generated log of 20,000 rows: they read the
roll-ups, not the rows, so their cost follows the cells of the range, not the rows of the log (the figures
at a million and ten million rows are in docs/observability.md)."""

import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from identity.models import Membership, Role
from proxy.models import ApiKey, RequestLog, UsageDay

pytestmark = pytest.mark.django_db

ROWS = 20_000


@pytest.fixture
def log():
    call_command("filllogs", "--rows", str(ROWS), "--days", "40", "--rebuild", stdout=StringIO())
    assert RequestLog.objects.count() == ROWS


def page(client: Client, url: str) -> tuple[list[str], float]:
    """The SQL of one request of ``url`` (after a first one that warms the caches) and its CPU time."""
    assert client.get(url).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        cpu = time.process_time()
        response = client.get(url)
        cpu = time.process_time() - cpu
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries], cpu


def test_the_dashboard_reads_the_roll_ups_only(admin_client, log):
    sql, cpu = page(admin_client, "/admin/proxy/usage/")
    assert len(sql) <= 25
    assert not [q for q in sql if "proxy_requestlog" in q], "a panel reads the request log's rows"
    cells = UsageDay.objects.count()
    assert cells < ROWS / 2  # what the page groups: far fewer than the rows
    assert cpu < 2.0  # about 0.1 s; generous for a loaded machine
    # Filtered by a key or a team, only the latency percentiles read rows (that key's or team's).
    key = ApiKey.objects.filter(name__startswith="generated-").first()
    sql, _cpu = page(admin_client, f"/admin/proxy/usage/?key={key.pk}&team={key.team_id}")
    assert len([q for q in sql if "proxy_requestlog" in q]) == 1


def test_the_portal_usage_pages_read_the_roll_ups_and_a_window_of_rows(log):
    busiest = UsageDay.objects.exclude(api_key_id=0).order_by("-turns").first()
    key = ApiKey.objects.get(pk=busiest.api_key_id)
    Membership.objects.create(user=key.owner, team=key.team, role=Role.LEAD)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(key.owner)
    sql, cpu = page(client, "/portal/usage/")
    rows = [q for q in sql if "proxy_requestlog" in q]
    # The sessions only: newest first a window at a time, then the shown sessions' own rows.
    assert 1 < len(rows) <= 6 and all("session_id" in q for q in rows)
    assert cpu < 2.0
    for url in ("/portal/", f"/portal/teams/{key.team_id}/"):
        sql, cpu = page(client, url)
        assert not [q for q in sql if "proxy_requestlog" in q], url
        assert cpu < 2.0
