"""The usage dashboard and its exports against what people type into a filter or name a key, team,
model or session: a page with a message, never a 500, and no cell a spreadsheet would run as a formula."""

import csv
import io

import pytest
from django.urls import reverse
from django.utils import translation

from proxy.models import RequestLog, Team
from tests.conftest import make_key, make_provider

# OWASP's list: a cell starting with one of these is read as a formula by spreadsheets.
FORMULAS = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx"]


def exported(client, **params: str) -> list[list[str]]:
    response = client.get(reverse("admin:proxy_usage_changelist"), params)
    assert response.status_code == 200
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize("payload", FORMULAS)
def test_exported_cells_never_start_a_formula(admin_client, payload):
    team = Team.objects.create(name=f"{payload} team")
    key, _ = make_key(f"{payload} key", team=team)
    provider = make_provider(None, name="north")
    RequestLog.objects.create(
        api_key=key,
        team=team,
        provider=provider,
        upstream_model=f"{payload}model",
        requested_model=f"{payload}model",
        session_id=f"{payload}session",
        response_id=f"{payload}resp",
        error_code=f"{payload}code",
        status=400,
    )
    cells = [
        cell
        for export in ("aggregates", "rows")
        for row in exported(admin_client, export=export)
        for cell in row
    ]
    client_strings = [
        c for c in cells if any(part in c for part in ("team", "key", "model", "session", "resp"))
    ]
    assert len(client_strings) >= 7, cells
    for cell in cells:
        assert not cell or cell[0] not in "=+-@\t\r", cell
    assert f"'{payload}model" in cells and f"'{payload}session" in cells, cells


def test_numbers_in_exports_stay_numbers(admin_client):
    key, _ = make_key("plain")
    RequestLog.objects.create(api_key=key, upstream_model="gpt-5.5", input_tokens=-0, output_tokens=3)
    rows = exported(admin_client, export="rows")
    assert rows[1][rows[0].index("output_tokens")] == "3"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key": "99999999999999999999999"}, "The filter “key” is not valid; it is ignored."),
        ({"provider": "-99999999999999999999999"}, "The filter “provider” is not valid; it is ignored."),
        ({"team": "1e400"}, "The filter “team” is not valid; it is ignored."),
        ({"start": "0001-01-01", "end": "9999-12-31"}, "The end date is out of range."),
        ({"end": "9999-12-31"}, "The end date is out of range."),
        ({"start": "9999-12-31"}, "The start date is out of range."),
    ],
)
@pytest.mark.parametrize("export", ["", "aggregates", "rows"])
def test_bad_filters_get_the_page_with_a_message(admin_client, params, message, export):
    make_key("k")
    url = reverse("admin:proxy_usage_changelist")
    response = admin_client.get(url, {**params, **({"export": export} if export else {})})
    assert response.status_code == 200
    if export:
        b"".join(response.streaming_content)
        return
    assert message in response.content.decode()
    with translation.override("ja"):
        response = admin_client.get(url, params, headers={"accept-language": "ja"})
    assert response.status_code == 200 and message not in response.content.decode()
    assert "errornote" in response.content.decode()
