"""The audit log: every configured model's changes, sign-ins, revocations, with the actor of each entry
point (admin page, management command), chained so that an edited or removed row is found."""

import getpass
import json
import time
from collections.abc import Callable
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.http import HttpRequest
from django.urls import reverse

from audit.models import AuditEvent
from audit.signals import AUDITED, NOT_AUDITED
from tests.conftest import make_key, make_provider

pytestmark = pytest.mark.django_db

PROVIDER_SECRET = "sk-upstream-audit-secret-0123456789"


def same(logged: Any, value: Any) -> bool:
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return Decimal(logged) == Decimal(value)
    if hasattr(value, "isoformat"):  # a date or time is logged as its text
        return logged == str(value)
    return logged == value


def events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("seq"))


def _team() -> Any:
    from proxy.models import Team

    return Team.objects.create(name="blue", daily_budget=5)


def _membership() -> Any:
    from identity.models import Membership

    user = get_user_model().objects.create(username="member")
    return Membership.objects.create(user=user, team=_team())


def _price() -> Any:
    from proxy.models import ModelPrice

    return ModelPrice.objects.create(model="audit-model", input_per_million=1, output_per_million=2)


def _settings() -> Any:
    from settings_app.models import SystemSettings

    return SystemSettings.load()


def _channel() -> Any:
    from audit.models import AlertChannel

    channel = AlertChannel(name="ops")
    channel.set_url("json://127.0.0.1:9/hook")
    channel.save()
    return channel


def _policy() -> Any:
    from audit.models import TeamAlertPolicy

    return TeamAlertPolicy.objects.create(team=_team())


def _in_hours(hours: int) -> Any:
    import datetime as dt

    from django.utils import timezone

    return timezone.now().replace(microsecond=0) + dt.timedelta(hours=hours)


def _break_glass() -> Any:
    user = get_user_model().objects.create(username="glass")
    return apps.get_model("identity.BreakGlass").objects.create(user=user, until=_in_hours(1))


MAKERS: dict[str, tuple[Callable[[], Any], str, Any]] = {
    # label: (make one, a field to change, its new value)
    "providers.Provider": (lambda: make_provider(None), "priority", 7),
    "proxy.ApiKey": (lambda: make_key()[0], "name", "renamed"),
    "proxy.Team": (_team, "monthly_budget", 100),
    "proxy.ModelPrice": (_price, "output_per_million", 3),
    "identity.Membership": (_membership, "role", "lead"),
    "auth.User": (lambda: get_user_model().objects.create(username="bob"), "email", "bob@example.test"),
    "auth.Group": (lambda: apps.get_model("auth.Group").objects.create(name="ops"), "name", "sre"),
    "settings_app.SystemSettings": (_settings, "client_websockets", False),
    "audit.AlertChannel": (_channel, "enabled", False),
    "audit.TeamAlertPolicy": (_policy, "thresholds", [50, 100]),
    "identity.ScimGroup": (
        lambda: apps.get_model("identity.ScimGroup").objects.create(team=_team(), external_id="g-1"),
        "external_id",
        "g-2",
    ),
    "identity.BreakGlass": (_break_glass, "until", _in_hours(2)),
}


def test_every_model_is_either_audited_or_named_as_bookkeeping():
    labels = {m._meta.label for m in apps.get_models(include_auto_created=False)}
    assert labels - set(AUDITED) - set(NOT_AUDITED) == set()
    assert set(MAKERS) == set(AUDITED)


@pytest.mark.parametrize("label", AUDITED)
def test_a_change_through_the_orm_is_recorded_with_before_and_after(label):
    make, field, value = MAKERS[label]
    obj = make()
    created = events(object_type=label, action="create")
    assert [e.object_id for e in created] == [str(obj.pk)]
    before = getattr(obj, field)
    setattr(obj, field, value)
    obj.save()
    (update,) = events(object_type=label, action="update")
    assert update.object_id == str(obj.pk) and update.actor == "system" and update.source == "system"
    old, new = update.changes[field]
    assert same(old, before) and same(new, value)
    obj.delete()
    assert [e.action for e in events(object_type=label)] == ["create", "update", "delete"]


def test_secrets_are_logged_only_as_changed():
    provider = make_provider(None, extra_headers={"Authorization": "Bearer hdr-secret"})
    provider.set_api_key(PROVIDER_SECRET)
    provider.save()
    key, raw = make_key()
    user = get_user_model().objects.create_user("carol", password="pw-very-secret-1")
    user.set_password("pw-very-secret-2")
    user.save()
    dumped = json.dumps([e.changes for e in AuditEvent.objects.all()])
    for secret in (PROVIDER_SECRET, "hdr-secret", raw, key.hashed_key, "pw-very-secret", user.password):
        assert secret not in dumped
    (update,) = events(object_type="providers.Provider", action="update")
    assert update.changes == {"api_key_encrypted": "changed"}
    assert events(object_type="auth.User", action="update")[0].changes == {"password": "changed"}


@pytest.mark.parametrize(
    "change",
    [{"enabled": False}, {"expires_at": "past"}],
    ids=["disabled", "expired"],
)
def test_revoking_a_key_is_its_own_action(change):
    import datetime as dt

    from django.utils import timezone

    key, _raw = make_key()
    for field, value in change.items():
        setattr(key, field, timezone.now() - dt.timedelta(minutes=1) if value == "past" else value)
    key.save()
    key.name = "still revoked, renamed"
    key.save()
    assert [e.action for e in events(object_type="proxy.ApiKey")] == ["create", "revoke", "update"]


def test_group_membership_of_a_user_is_recorded():
    group = apps.get_model("auth.Group").objects.create(name="admins")
    user = get_user_model().objects.create(username="dave")
    user.groups.add(group)
    (row,) = events(object_type="auth.User", action="update")
    assert row.changes == {"groups": {"added": ["admins"]}}


def test_commands_act_as_the_login_that_ran_them(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"audit-model": {"input_per_million": 1, "output_per_million": 2}}))
    call_command("loadprices", str(prices), stdout=StringIO())
    call_command("createteam", "--name", "green", "--daily-budget", "3", stdout=StringIO())
    call_command("createapikey", "--name", "ci", "--user", "deploy", "--create-user", stdout=StringIO())
    rows = events(source="cli")
    assert {e.object_type for e in rows} >= {"proxy.ModelPrice", "proxy.Team", "proxy.ApiKey", "auth.User"}
    assert {e.actor for e in rows} == {f"cli:{getpass.getuser()}"}
    assert len({e.request_id for e in rows}) == 3  # one id per command run
    assert AuditEvent.objects.exclude(source="cli").count() == 0


def test_admin_changes_and_sign_ins_name_the_person_and_address(client):
    from proxy.models import ModelPrice

    get_user_model().objects.create_superuser("root", "root@example.test", "pw-admin-123")
    # django-axes counts failures per client address: a sign-in needs its request.
    assert not client.login(request=HttpRequest(), username="root", password="wrong-password-xyz")
    assert client.login(request=HttpRequest(), username="root", password="pw-admin-123")
    failed, signed = events(action="sign-in-failed"), events(action="sign-in")
    assert [(e.actor, e.actor_user_id) for e in failed] == [("root", None)]
    assert "wrong-password-xyz" not in json.dumps([e.changes for e in failed])
    assert [e.actor for e in signed] == ["root"]
    response = client.post(
        reverse("admin:proxy_modelprice_add"),
        {"model": "audit-model", "input_per_million": "1", "cached_input_per_million": "0",
         "output_per_million": "4"},
        HTTP_X_REQUEST_ID="req-abc-123",
        REMOTE_ADDR="192.0.2.7",
    )  # fmt: skip
    assert response.status_code == 302
    assert response["X-Request-ID"] == "req-abc-123"
    (row,) = events(object_type="proxy.ModelPrice")
    price = ModelPrice.objects.get(model="audit-model")
    root = get_user_model().objects.get(username="root")
    assert (row.actor, row.actor_user_id, row.source) == ("root", root.pk, "admin")
    assert (row.client_ip, row.request_id, row.object_id) == ("192.0.2.7", "req-abc-123", str(price.pk))
    assert row.changes["output_per_million"] == [None, "4.0000"]
    client.logout()
    (out,) = events(action="sign-out")
    assert (out.actor, out.actor_user_id, out.object_id) == ("root", root.pk, str(root.pk))


def _rows(count: int) -> list[AuditEvent]:
    from audit.chain import record

    return [
        record("update", object_type="proxy.Team", object_id=i, changes={"n": [i, i + 1]})
        for i in range(count)
    ]


def verifyaudit() -> tuple[int, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("verifyaudit", stdout=out, stderr=err)
    except SystemExit as exit:
        return int(exit.code or 0), err.getvalue()
    return 0, out.getvalue()


def test_verifyaudit_names_the_first_edited_row_and_then_the_removed_one():
    rows = _rows(6)
    assert verifyaudit() == (0, "The audit log is intact.\n")
    AuditEvent.objects.filter(pk=rows[2].pk).update(actor="someone else")
    AuditEvent.objects.filter(pk=rows[4].pk).delete()
    code, message = verifyaudit()
    assert (code, message.strip()) == (1, f"Audit row {rows[2].seq} was edited.")
    AuditEvent.objects.filter(pk=rows[2].pk).update(actor=rows[2].actor)  # put back: the removal shows
    code, message = verifyaudit()
    assert code == 1 and message.startswith(f"Audit row {rows[4].seq} was removed")


@pytest.mark.parametrize("tamper", ["changes", "time", "last", "first"])
def test_verifyaudit_finds_each_kind_of_tampering(tamper):
    import datetime as dt

    rows = _rows(3)
    target = {"changes": rows[1], "time": rows[1], "last": rows[2], "first": rows[0]}[tamper]
    query = AuditEvent.objects.filter(pk=target.pk)
    if tamper == "changes":
        query.update(changes={"n": [1, 99]})
    elif tamper == "time":
        query.update(time=target.time - dt.timedelta(seconds=1))
    else:
        query.delete()
    code, message = verifyaudit()
    assert code == 1 and message.startswith(f"Audit row {target.seq}")


def test_pruning_keeps_the_chain_verifiable_from_its_anchor():
    import datetime as dt

    from django.utils import timezone

    rows = _rows(5)
    old = timezone.now() - dt.timedelta(days=500)
    AuditEvent.objects.filter(pk__in=[r.pk for r in rows[:3]]).update(time=old)
    out = StringIO()
    call_command("pruneaudit", stdout=out)
    assert out.getvalue().strip() == "Deleted 3 audit rows older than 400 days."
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [r.seq for r in rows[3:]]
    assert verifyaudit()[0] == 0
    AuditEvent.objects.filter(pk=rows[3].pk).delete()  # the first row after the anchor is still checked
    assert verifyaudit()[1].startswith(f"Audit row {rows[3].seq} was removed")


def test_pruning_goes_in_batches_each_leaving_its_last_row_as_the_anchor():
    """The audit log is pruned by the request log's batch loop: a short transaction per batch (appending
    waits for one batch only), the anchor moving with each, so the chain verifies between any two."""
    import datetime as dt

    from django.utils import timezone

    from audit.chain import prune
    from audit.models import AuditChain

    rows = _rows(7)
    AuditEvent.objects.filter(pk__in=[r.pk for r in rows[:5]]).update(
        time=timezone.now() - dt.timedelta(days=9)
    )
    assert prune(timezone.now() - dt.timedelta(days=8), batch=2) == 5
    head = AuditChain.objects.get(pk=1)
    assert (head.anchor_seq, head.anchor_hash) == (rows[4].seq, rows[4].hash)
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == [r.seq for r in rows[5:]]
    assert verifyaudit()[0] == 0
    assert prune(timezone.now() - dt.timedelta(days=8), batch=2) == 0


def test_the_admin_shows_the_log_but_lets_nobody_add_change_or_delete(admin_client):
    rows = _rows(2)
    changelist = reverse("admin:audit_auditevent_changelist")
    assert admin_client.get(changelist).status_code == 200
    change = reverse("admin:audit_auditevent_change", args=[rows[0].pk])
    page = admin_client.get(change)
    assert page.status_code == 200 and b'name="_save"' not in page.content  # view only
    assert admin_client.post(change, {"actor": "x"}).status_code == 403
    assert admin_client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert (
        admin_client.post(
            reverse("admin:audit_auditevent_delete", args=[rows[0].pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    response = admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [rows[0].pk]})
    assert AuditEvent.objects.filter(pk=rows[0].pk).exists(), response.status_code
    assert verifyaudit()[0] == 0


def test_history_of_an_object_opens_its_audit_rows_and_exports_them(admin_client):
    import csv

    from proxy.models import ModelPrice

    # A spreadsheet would take the first name for a formula; the second holds the first's id.
    first = ModelPrice.objects.create(model="=m-a", input_per_million=1, output_per_million=2)
    second = ModelPrice.objects.create(model=f"m-{first.pk}", input_per_million=1, output_per_million=2)
    first.output_per_million = 5
    first.save()
    history = admin_client.get(reverse("admin:proxy_modelprice_history", args=[first.pk]))
    assert history.status_code == 302
    listed = admin_client.get(history["Location"])
    assert [e.object_id for e in listed.context["cl"].result_list] == [str(first.pk)] * 2
    assert b"audit/auditevent/export.csv?" in listed.content
    query = history["Location"].split("?", 1)[1]
    exported = admin_client.get(reverse("admin:audit_auditevent_export") + "?" + query)
    lines = list(csv.reader(b"".join(exported.streaming_content).decode().splitlines()))
    assert lines[0][:3] == ["seq", "time", "actor"]
    assert [(r[5], r[7]) for r in lines[1:]] == [("create", str(first.pk)), ("update", str(first.pk))]
    assert json.loads(lines[2][9]) == {"output_per_million": ["2.0000", "5.0000"]}
    assert lines[1][8] == "'=m-a"
    assert second.pk != first.pk


def test_the_export_is_refused_to_a_person_who_may_not_see_the_log(client):
    staff = get_user_model().objects.create_user("staff", password="pw-staff-123", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:audit_auditevent_export")).status_code == 403
    assert client.get(reverse("admin:audit_auditevent_changelist")).status_code == 403


WRITER = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
import time
from audit.chain import record
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # both start together
for i in range(int(sys.argv[1])):
    record("update", object_type="proxy.Team", object_id=i, object_label=sys.argv[2])
    time.sleep(0.01)  # changes come apart (SQLite would otherwise let one writer finish first)
"""


def test_two_processes_writing_at_once_keep_one_linear_chain(transactional_db):
    """Each row's previous hash is read and its own written under one lock, whichever process writes."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    from tests.serveproc import ROOT, database_url

    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
        "LOG_LEVEL": "WARNING",
    }
    start = time.time() + 4  # past both processes' start-up
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, "60", name, str(start)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 121))
    labels = list(AuditEvent.objects.order_by("seq").values_list("object_label", flat=True))
    assert labels.count("one") == labels.count("two") == 60
    assert labels != sorted(labels), "the two writers did not overlap: the test proves nothing"
    assert verifyaudit() == (0, "The audit log is intact.\n")


def test_a_save_of_some_fields_records_only_those():
    user = get_user_model().objects.create(username="erin")
    user.first_name = "set but not saved"
    user.email = "erin@example.test"
    user.save(update_fields=["email"])
    (row,) = events(object_type="auth.User", action="update")
    assert row.changes == {"email": ["", "erin@example.test"]}


@pytest.mark.parametrize("thresholds", ["[0.5]", "[80, 2000]", '["80"]', "80"])
def test_a_team_policy_takes_whole_percentages_only(admin_client, thresholds):
    from audit.models import TeamAlertPolicy

    team = _team()
    response = admin_client.post(
        reverse("admin:audit_teamalertpolicy_add"), {"team": team.pk, "thresholds": thresholds}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["thresholds"] == [
        "Enter a JSON list of whole percentages from 1 to 1000."
    ]
    assert not TeamAlertPolicy.objects.exists()


def test_auditlog_prints_rows_since_a_time_as_json_lines():
    import datetime as dt

    from django.core.management import CommandError
    from django.utils import timezone

    rows = _rows(3)
    AuditEvent.objects.filter(pk=rows[0].pk).update(time=timezone.now() - dt.timedelta(days=10))
    for since in ("7d", (timezone.now() - dt.timedelta(days=1)).date().isoformat()):
        out = StringIO()
        call_command("auditlog", "--since", since, "--json", stdout=out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["seq"] for line in lines] == [rows[1].seq, rows[2].seq]
        assert lines[0]["changes"] == {"n": [1, 2]} and lines[0]["actor"] == "system"
    out = StringIO()
    call_command("auditlog", stdout=out)
    assert len(out.getvalue().splitlines()) == 3 and "proxy.Team 0" in out.getvalue().splitlines()[0]
    with pytest.raises(CommandError, match="--since takes"):
        call_command("auditlog", "--since", "last tuesday", stdout=StringIO())
