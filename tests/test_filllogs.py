"""`manage.py filllogs`, which the README names for measuring the dashboard, writes rows the log can hold."""

from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_filllogs_inserts_the_rows_asked_for_with_their_keys_owner():
    from proxy.models import ApiKey, RequestLog

    out = StringIO()
    call_command("filllogs", "--rows", "300", "--days", "2", stdout=out)
    assert "Inserted 300 rows" in out.getvalue()
    assert RequestLog.objects.count() == 300
    keyed = RequestLog.objects.exclude(api_key=None)
    assert keyed.exists()
    owners = dict(ApiKey.objects.values_list("pk", "owner_id"))
    assert all(row.owner_id == owners[row.api_key_id] for row in keyed)
