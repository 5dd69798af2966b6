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
