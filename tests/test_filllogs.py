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


def test_filllogs_refuses_a_database_whose_log_holds_rows_and_writes_nothing():
    """Generated rows cannot be told from real ones afterwards: a log that already holds rows (a production
    database) is refused, with nothing written, unless the operator passes --into-existing-database."""
    from django.contrib.auth import get_user_model
    from django.core.management import CommandError

    from providers.models import Provider
    from proxy.models import ApiKey, RequestLog

    owner = get_user_model().objects.create_user("someone")
    key = ApiKey(name="real", owner=owner)
    key.generate()
    key.save()
    RequestLog.objects.create(api_key=key, owner=owner, upstream_model="gpt-5.5")
    with pytest.raises(CommandError, match="--into-existing-database"):
        call_command("filllogs", "--rows", "50", "--days", "1", stdout=StringIO())
    assert RequestLog.objects.count() == 1
    assert ApiKey.objects.count() == 1 and not Provider.objects.exists()
    assert not get_user_model().objects.filter(username="filllogs").exists()

    call_command("filllogs", "--rows", "50", "--days", "1", "--into-existing-database", stdout=StringIO())
    assert RequestLog.objects.count() == 51


def test_filllogs_run_again_on_its_own_rows_needs_the_flag_too():
    from django.core.management import CommandError

    from proxy.models import RequestLog

    call_command("filllogs", "--rows", "20", "--days", "1", stdout=StringIO())
    with pytest.raises(CommandError):
        call_command("filllogs", "--rows", "20", "--days", "1", stdout=StringIO())
    assert RequestLog.objects.count() == 20
