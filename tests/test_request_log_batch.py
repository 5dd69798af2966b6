"""A batch of the request log is counted and stored as its turns one by one would be: the metrics summed
per label set, the datetimes in the text Django's own adapter makes, the prices looked up per model."""

import datetime as dt
import os
import subprocess
import sys
import zoneinfo
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from proxy.common.outcome import Outcome
from proxy.common.record import TurnRecord
from proxy.usage import logwriter, metrics


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def record(transport: str, status: int, output: int, seconds: float) -> TurnRecord:
    r = TurnRecord(key_id=None, client_transport=transport, requested_model="batch-model", status=status)
    r.outcome = Outcome(input_tokens=10, output_tokens=output)
    r.finished_at = r.started + seconds
    r.first_event_at = r.started + seconds / 2
    return r


def turns(transport: str, status: int) -> float:
    labels = {"client_transport": transport, "upstream_transport": "", "provider": "", "model": "other"}
    return sample("sluice_turns_total", {**labels, "status": str(status)})


@pytest.mark.django_db
def test_a_batch_counts_each_turn_under_its_own_labels():
    batch = [
        record("http", 200, 3, 0.07),
        record("websocket", 200, 0, 0.3),
        record("http", 200, 5, 0.07),
        record("http", 429, 0, 0.01),
    ]
    before = {
        "http 200": turns("http", 200),
        "websocket 200": turns("websocket", 200),
        "http 429": turns("http", 429),
        "refused": sample("sluice_refusals_total", {"code": "429"}),
        "output": sample("sluice_tokens_total", {"kind": "output", "model": "other"}),
        "input": sample("sluice_tokens_total", {"kind": "input", "model": "other"}),
        "cost": sample("sluice_cost_usd_total", {"model": "other"}),
        "fast http": sample("sluice_turn_duration_seconds_bucket", {"client_transport": "http", "le": "0.1"}),
        "http": sample("sluice_turn_duration_seconds_count", {"client_transport": "http"}),
        "websocket": sample("sluice_turn_duration_seconds_count", {"client_transport": "websocket"}),
    }
    metrics.observe_batch(batch, [Decimal("0.5"), Decimal(0), Decimal("0.25"), Decimal(0)])
    assert turns("http", 200) - before["http 200"] == 2
    assert turns("websocket", 200) - before["websocket 200"] == 1
    assert turns("http", 429) - before["http 429"] == 1
    assert sample("sluice_refusals_total", {"code": "429"}) - before["refused"] == 1
    assert sample("sluice_tokens_total", {"kind": "output", "model": "other"}) - before["output"] == 8
    assert sample("sluice_tokens_total", {"kind": "input", "model": "other"}) - before["input"] == 40
    assert sample("sluice_cost_usd_total", {"model": "other"}) - before["cost"] == pytest.approx(0.75)
    bucket = sample("sluice_turn_duration_seconds_bucket", {"client_transport": "http", "le": "0.1"})
    assert bucket - before["fast http"] == 3
    assert sample("sluice_turn_duration_seconds_count", {"client_transport": "http"}) - before["http"] == 3
    count = sample("sluice_turn_duration_seconds_count", {"client_transport": "websocket"})
    assert count - before["websocket"] == 1


@pytest.mark.django_db
def test_datetimes_are_stored_as_djangos_adapter_would_store_them():
    from django.db import connection

    adapt = logwriter._datetime_adapter(connection)
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    for value in (
        dt.datetime(2026, 12, 8, 4, 5, 6, 789012, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 8, 4, 5, 6, tzinfo=dt.UTC),  # no microseconds: no fraction either
        dt.datetime(2026, 12, 8, 13, 5, 6, 1, tzinfo=tokyo),
        dt.datetime.fromtimestamp(1.5e9, dt.UTC),
        None,
    ):
        assert adapt(value) == connection.ops.adapt_datetimefield_value(value), value


def test_the_benchmark_switch_turns_the_request_log_off(tmp_path):
    """SLUICE_BENCHMARK_UNGOVERNED=1 (the benchmark's -bare scenarios) writes no row and starts no writer;
    without it the same submit queues the row (the switch is read once, at start-up: a process of its own)."""
    code = (
        "import django; django.setup()\n"
        "from proxy.usage import logwriter\n"
        "from proxy.common.record import TurnRecord\n"
        "logwriter.submit(TurnRecord(key_id=None, client_transport='http'))\n"
        "print(logwriter._pending, logwriter._thread is None)\n"
        "logwriter._pending = 0\n"  # no database here: nothing for the exit's flush to wait for
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SLUICE_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "REDIS_URL": "",
    }
    found = {}
    for switch in ("1", ""):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=Path(__file__).resolve().parent.parent,
            env={**env, "SLUICE_BENCHMARK_UNGOVERNED": switch},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        found[switch] = done.stdout.split()
        if switch:
            assert "SLUICE_BENCHMARK_UNGOVERNED=1" in done.stderr, "the switch is said at start-up"
    assert found == {"1": ["0", "True"], "": ["1", "False"]}
