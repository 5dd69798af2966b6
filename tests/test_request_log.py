"""The request log writer: off the hot path, batched, and it loses no row."""

import pytest

from proxy.common.record import TurnRecord
from proxy.usage import logwriter
from tests.conftest import make_key, make_provider, request_logs

pytestmark = pytest.mark.django_db(transaction=True)


def test_rows_of_a_deleted_key_and_provider_are_kept_without_the_link():
    key, _ = make_key()
    provider = make_provider(None)
    gone_key, _ = make_key("gone", username="bob")
    gone_provider = make_provider(None, name="gone")
    kept = TurnRecord(key_id=key.pk, client_transport="http", requested_model="a", provider_id=provider.pk)
    orphan = TurnRecord(
        key_id=gone_key.pk, client_transport="websocket", requested_model="b", provider_id=gone_provider.pk
    )
    gone_key.delete()
    gone_provider.delete()
    logwriter.submit(kept)
    logwriter.submit(orphan)
    rows = {r.requested_model: r for r in request_logs(2)}
    assert (rows["a"].api_key_id, rows["a"].provider_id) == (key.pk, provider.pk)
    assert (rows["b"].api_key_id, rows["b"].provider_id) == (None, None)


def test_cost_uses_the_longest_matching_price_and_last_used_is_recorded():
    from decimal import Decimal

    from proxy.models import ApiKey, ModelPrice

    key, _ = make_key()
    ModelPrice.objects.all().delete()
    ModelPrice.objects.create(model="gpt-5", input_per_million=Decimal("1"), output_per_million=Decimal("1"))
    ModelPrice.objects.create(
        model="gpt-5.5", input_per_million=Decimal("4"), output_per_million=Decimal("8")
    )
    record = TurnRecord(key_id=key.pk, client_transport="http", requested_model="x")
    record.outcome.model = "gpt-5.5-2026-01-01"
    record.outcome.input_tokens, record.outcome.output_tokens = 1_000_000, 500_000
    logwriter.submit(record)
    (row,) = request_logs(1)
    assert row.cost == Decimal("8.00000000")  # 1M x 4 + 0.5M x 8, per million
    assert ApiKey.objects.get(pk=key.pk).last_used_at is not None
