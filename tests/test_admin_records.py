"""The request log is the record of spend: no one deletes its rows in the admin, and a key, team or person
that has rows is deactivated, not deleted; a row keeps its key and owner."""

import pytest
from django.contrib.auth import get_user_model
from django.db.models import ProtectedError
from django.urls import reverse

from proxy.models import ApiKey, RequestLog, Team
from tests.conftest import make_key

pytestmark = pytest.mark.django_db


def a_row(key: ApiKey) -> RequestLog:
    return RequestLog.objects.create(api_key=key, owner=key.owner, team=key.team, requested_model="m")


def test_no_one_deletes_a_request_log_row_in_the_admin(admin_client):
    key, _ = make_key()
    row = a_row(key)
    assert admin_client.get(reverse("admin:proxy_requestlog_delete", args=[row.pk])).status_code == 403
    assert (
        admin_client.post(
            reverse("admin:proxy_requestlog_delete", args=[row.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    change = admin_client.get(reverse("admin:proxy_requestlog_change", args=[row.pk])).content.decode()
    assert "deletelink" not in change
    assert RequestLog.objects.filter(pk=row.pk).exists()


def test_a_key_with_rows_is_not_deleted_and_is_offered_deactivation(admin_client):
    key, _ = make_key("used")
    row = a_row(key)
    unused, _ = make_key("unused")
    url = reverse("admin:proxy_apikey_delete", args=[key.pk])
    page = admin_client.get(url).content.decode()
    assert "request-log rows" in page and "deactivate it instead" in page
    admin_client.post(url, {"post": "yes"})
    assert ApiKey.objects.filter(pk=key.pk).exists()
    with pytest.raises(ProtectedError):
        key.delete()
    # The list's deactivate action switches it off; a key without rows can still be deleted.
    changelist = reverse("admin:proxy_apikey_changelist")
    assert "deactivate" in admin_client.get(changelist).content.decode()
    admin_client.post(changelist, {"action": "deactivate", "_selected_action": [key.pk]})
    assert not ApiKey.objects.get(pk=key.pk).enabled
    admin_client.post(reverse("admin:proxy_apikey_delete", args=[unused.pk]), {"post": "yes"})
    assert not ApiKey.objects.filter(pk=unused.pk).exists()
    row.refresh_from_db()
    assert row.api_key_id == key.pk and row.owner_id == key.owner_id


def test_a_person_with_rows_is_deactivated_not_deleted_and_their_page_shows_their_keys(admin_client):
    key, _ = make_key("bobs-key", username="bob")
    a_row(key)
    bob = key.owner
    page = admin_client.get(reverse("admin:auth_user_change", args=[bob.pk])).content.decode()
    assert "bobs-key" in page and key.prefix in page
    url = reverse("admin:auth_user_delete", args=[bob.pk])
    assert "deactivate it instead" in admin_client.get(url).content.decode()
    admin_client.post(url, {"post": "yes"})
    assert ApiKey.objects.filter(pk=key.pk).exists()
    changelist = reverse("admin:auth_user_changelist")
    admin_client.post(changelist, {"action": "deactivate", "_selected_action": [bob.pk]})
    assert not get_user_model().objects.get(pk=bob.pk).is_active


def test_a_team_with_rows_is_not_deleted(admin_client):
    team = Team.objects.create(name="research")
    key, _ = make_key(team=team)
    a_row(key)
    admin_client.post(reverse("admin:proxy_team_delete", args=[team.pk]), {"post": "yes"})
    assert Team.objects.filter(pk=team.pk).exists()
    admin_client.post(
        reverse("admin:proxy_team_changelist"), {"action": "deactivate", "_selected_action": [team.pk]}
    )
    assert not Team.objects.get(pk=team.pk).enabled


def test_the_admin_index_leads_to_the_dashboard(admin_client, client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    start = page.split('id="sluice-start"', 1)[1].split("</table>", 1)[0]
    assert reverse("admin:proxy_usage_changelist") in start
    assert "/admin/audit/" in start  # and to the audit log (the link shows only with the app installed)
    # Staff who may not read the log get no dashboard link.
    client.force_login(get_user_model().objects.create_user("clerk", password="pw-clerk-1", is_staff=True))
    assert "sluice-start" not in client.get(reverse("admin:index")).content.decode()


def test_breadcrumbs_name_each_step_once(admin_client):
    import re

    from tests.conftest import make_provider

    provider = make_provider(None)
    for url in (
        reverse("admin:providers_provider_change", args=[provider.pk]),
        reverse("admin:providers_provider_changelist"),
        reverse("admin:settings_app_systemsettings_changelist"),
    ):
        response = admin_client.get(url, follow=True)
        trail = response.content.decode().split('class="breadcrumbs"', 1)[1].split("</div>", 1)[0]
        steps = [s.strip() for s in re.sub(r"<[^>]+>", "", trail).replace("&rsaquo;", "›").split("›")]
        assert len(steps) == len(set(steps)), steps
