"""Per-worker state for ``pytest -n N`` (pytest-xdist), loaded with ``-p tests.workers``.

Django's settings are read before any conftest runs, so this plugin, imported first, gives each worker a
data directory and a Redis database of its own through the environment the settings read: every test
flushes the cache (a shared Redis database would be emptied under the other workers' tests), and the data
directory holds the file-based config versions and the SQLite test database. Without xdist it does nothing.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... set by xdist before configuring


def _redis_database(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


if _worker:
    _index = int(_worker.removeprefix("gw"))
    _data = os.environ.get("SLUICE_DATA_DIR") or str(Path(__file__).resolve().parent.parent / "data")
    os.environ["SLUICE_DATA_DIR"] = str(Path(_data) / f"worker-{_worker}")
    if os.environ.get("REDIS_URL"):
        # Database 0 is a run without workers', 15 the container image check's (.ci/run); Redis has 16.
        if _index >= 14:
            raise RuntimeError("tests.workers: at most 14 workers share one Redis server")
        os.environ["REDIS_URL"] = _redis_database(os.environ["REDIS_URL"], _index + 1)
