"""People are put in teams (and made leads) in the admin too, not only by sign-in or SCIM."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from identity.models import Membership, Role, Source
from proxy.models import Team

pytestmark = pytest.mark.django_db


def test_an_operator_makes_someone_a_team_lead_in_the_admin(admin_client):
    team = Team.objects.create(name="research")
    dana = get_user_model().objects.create(username="dana")
    response = admin_client.post(
        reverse("admin:identity_membership_add"), {"user": dana.pk, "team": team.pk, "role": Role.LEAD}
    )
    assert response.status_code == 302, response.content[:2000]
    (membership,) = Membership.objects.all()
    assert (membership.user, membership.team, membership.role, membership.source) == (
        dana,
        team,
        Role.LEAD,
        Source.MANUAL,
    )
    listed = admin_client.get(reverse("admin:identity_membership_changelist") + "?role=lead")
    assert "dana" in listed.content.decode()


MEMBERSHIP_PERMISSIONS = ("view_membership", "add_membership", "change_membership", "delete_membership")


@pytest.fixture
def lead_of_ours(client):
    """A staff lead of "ours-team" with every membership permission; "theirs-team" has a member of its own."""
    from django.contrib.auth.models import Permission

    ours, theirs = Team.objects.create(name="ours-team"), Team.objects.create(name="theirs-team")
    lead = get_user_model().objects.create_user("lead", is_staff=True)
    lead.user_permissions.add(*Permission.objects.filter(codename__in=(*MEMBERSHIP_PERMISSIONS, "view_team")))
    people = {name: get_user_model().objects.create(username=name) for name in ("olga", "theo", "newbie")}
    Membership.objects.create(user=lead, team=ours, role=Role.LEAD)
    mine = Membership.objects.create(user=people["olga"], team=ours)
    other = Membership.objects.create(user=people["theo"], team=theirs)
    client.force_login(lead)
    return {"ours": ours, "theirs": theirs, "mine": mine, "other": other, **people}


def test_a_lead_sees_and_changes_only_their_teams_memberships(client, lead_of_ours):
    w = lead_of_ours
    listed = client.get(reverse("admin:identity_membership_changelist"))
    assert listed.status_code == 200
    text = listed.content.decode()
    assert "olga" in text and "ours-team" in text
    assert "theo" not in text and "theirs-team" not in text, "another team's memberships, or its name"
    assert client.get(reverse("admin:identity_membership_change", args=[w["other"].pk])).status_code == 302
    form = reverse("admin:identity_membership_change", args=[w["other"].pk])
    client.post(form, {"user": w["theo"].pk, "team": w["theirs"].pk, "role": Role.LEAD})
    delete = reverse("admin:identity_membership_delete", args=[w["other"].pk])
    client.post(delete, {"post": "yes"})
    w["other"].refresh_from_db()
    assert w["other"].role == Role.MEMBER, "another team's membership was changed"

    own = reverse("admin:identity_membership_change", args=[w["mine"].pk])
    assert client.get(own).status_code == 200
    changed = client.post(own, {"user": w["olga"].pk, "team": w["ours"].pk, "role": Role.LEAD})
    assert changed.status_code == 302, changed.content.decode()[:2000]
    w["mine"].refresh_from_db()
    assert w["mine"].role == Role.LEAD


def test_a_lead_cannot_put_anyone_in_another_team_by_a_forged_post(client, lead_of_ours):
    w = lead_of_ours
    add = reverse("admin:identity_membership_add")
    forged = client.post(add, {"user": w["newbie"].pk, "team": w["theirs"].pk, "role": Role.LEAD})
    assert forged.status_code == 200 and "Select a valid choice" in forged.content.decode()
    assert not Membership.objects.filter(user=w["newbie"]).exists()
    own = reverse("admin:identity_membership_change", args=[w["mine"].pk])
    moved = client.post(own, {"user": w["olga"].pk, "team": w["theirs"].pk, "role": Role.MEMBER})
    assert moved.status_code == 200 and "Select a valid choice" in moved.content.decode()
    assert Membership.objects.get(pk=w["mine"].pk).team == w["ours"]
    added = client.post(add, {"user": w["newbie"].pk, "team": w["ours"].pk, "role": Role.MEMBER})
    assert added.status_code == 302, added.content.decode()[:2000]
    assert Membership.objects.get(user=w["newbie"]).team == w["ours"]
