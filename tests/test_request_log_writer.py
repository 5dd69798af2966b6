"""The request log's writer thread outlives whatever one batch does to it."""

from prometheus_client import REGISTRY

from proxy.common.record import TurnRecord
from proxy.usage import logwriter


def dropped() -> float:
    return REGISTRY.get_sample_value("sluice_request_log_dropped_total", {"reason": "write_failed"}) or 0.0


def test_the_writer_outlives_a_batch_it_cannot_write(transactional_db, django_db_blocker):
    """The writer's connection is open, then every query of the writer's fails with an error it has no
    special case for (pytest-django's blocker refuses database access; the same would come of any fault in
    the driver): the rows are dropped and counted, a flush does not wait for rows that will never be
    written, and the same thread writes the next batch once the database answers again."""
    from proxy.models import RequestLog

    logwriter.submit(TurnRecord(key_id=None, client_transport="http", requested_model="before"))
    assert logwriter.flush(5)
    thread = logwriter._thread
    before = dropped()
    with django_db_blocker.block():
        for model in ("x", "y"):
            logwriter.submit(TurnRecord(key_id=None, client_transport="http", requested_model=model))
            assert logwriter.flush(5), "a flush waited for rows that had failed"
            assert logwriter._thread is thread and thread is not None and thread.is_alive(), "the writer died"
    assert dropped() - before == 2
    logwriter.submit(TurnRecord(key_id=None, client_transport="http", requested_model="after"))
    assert logwriter.flush(5) and logwriter._thread is thread
    assert sorted(RequestLog.objects.values_list("requested_model", flat=True)) == ["after", "before"]
