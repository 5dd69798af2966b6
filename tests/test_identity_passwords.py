"""Password sign-in on the admin's login page against the served gateway: lockout after repeated failures
(per account, in the database), unlocking with `manage.py axes_reset`, password sign-in turned off and the
break-glass command; and the team's identity-provider groups from `manage.py createteam`."""

from __future__ import annotations

import io
import re
from html import escape
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.utils import translation
from django.utils.translation import ngettext

from proxy.models import Team

USERNAME, PASSWORD = "root", "a-long-admin-password-for-tests"


@pytest.fixture
def superuser(transactional_db: None, django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(USERNAME, "root@example.test", PASSWORD)


def sign_in(client: httpx.Client, password: str) -> httpx.Response:
    page = client.get("/admin/login/?next=/admin/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": USERNAME, "password": password, "next": "/admin/"},
    )


def test_lockout_after_failures_and_unlock_by_command(gateway, superuser, settings):
    settings.AXES_FAILURE_LIMIT = 3
    with httpx.Client(base_url=gateway.url, timeout=20, headers={"Accept-Language": "ja"}) as client:
        answers = [sign_in(client, "wrong").status_code for _ in range(3)]
        assert answers == [200, 200, 429]  # the third failure locks
        locked = sign_in(client, PASSWORD)  # the right password changes nothing while locked
        assert locked.status_code == 429
        with translation.override("ja"):
            minutes = 15
            message = ngettext(
                "Please try again in %(minutes)s minute, or ask an administrator to unlock the account.",
                "Please try again in %(minutes)s minutes, or ask an administrator to unlock the account.",
                minutes,
            ) % {"minutes": minutes}
        assert "15" in message and escape(message) in locked.text and "Please try again" not in message
        from axes.models import AccessFailureLog  # the library's own record, read after the requests

        # Kept for the audit log: the three failures and the attempt while locked out.
        assert AccessFailureLog.objects.filter(username=USERNAME).count() == 4
        call_command("axes_reset", verbosity=0)
        assert sign_in(client, PASSWORD).status_code == 302


def test_password_sign_in_off_and_break_glass(gateway, superuser, settings):
    settings.SLUICE_PASSWORD_LOGIN = False
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        refused = sign_in(client, PASSWORD)
        assert refused.status_code == 200 and "Password sign-in is turned off." in refused.text
        call_command("breakglass", USERNAME, "--minutes", "5", stdout=io.StringIO())
        assert sign_in(client, PASSWORD).status_code == 302


def test_createteam_sets_identity_provider_groups(transactional_db):
    call_command(
        "createteam", "--name", "Platform", "--idp-groups", "eng, sre,", "--lead-idp-groups", "eng-leads"
    )
    team = Team.objects.get(name="Platform")
    assert (team.idp_groups, team.lead_idp_groups) == (["eng", "sre"], ["eng-leads"])
    call_command("createteam", "--name", "Platform", "--idp-groups", "")
    team.refresh_from_db()
    assert (team.idp_groups, team.lead_idp_groups) == ([], ["eng-leads"])
