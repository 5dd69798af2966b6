"""`manage.py serve` migrates under a PostgreSQL advisory lock, so nodes starting together take turns."""

import threading

import psycopg
import pytest
from django.db import connection

from proxy.management.commands.serve import MIGRATION_LOCK, migrate


@pytest.mark.django_db(transaction=True)
def test_migrate_waits_for_another_node_holding_the_migration_lock() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the migration lock is PostgreSQL's (SQLite has one writer anyway)")
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as other_node:
        other_node.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
        finished = threading.Event()

        def start_node() -> None:
            try:
                migrate()
            finally:
                connection.close()
                finished.set()

        thread = threading.Thread(target=start_node)
        thread.start()
        assert not finished.wait(1.5), "migrate ran while another node held the migration lock"
        other_node.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
        assert finished.wait(30), "migrate did not go on once the lock was released"
        thread.join()
        held = other_node.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        assert held == (0,), "the migration lock was kept after migrating"
