import os
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils.translation import gettext as _

from proxy.server import drain
from proxy.server.serving import server_options


class Command(BaseCommand):
    help = _("Migrate, then serve the gateway with uvicorn (HTTP and WebSocket on one port).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host", default="127.0.0.1", help=_("Address to listen on (default: %(default)s).")
        )
        parser.add_argument(
            "--port",
            type=int,
            default=settings.PORT,
            help=_("Port to listen on (default: %(default)s, from PORT)."),
        )
        parser.add_argument("--no-migrate", action="store_true", help=_("Do not migrate the database first."))
        parser.add_argument("--access-log", action="store_true", help=_("Log every HTTP request line."))
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.WEB_CONCURRENCY,
            help=_("Worker processes (default: %(default)s, from WEB_CONCURRENCY; several need REDIS_URL)."),
        )

    def handle(self, *args: object, **options: object) -> None:
        if int(options["workers"]) > 1 and not settings.REDIS_URL:  # type: ignore[arg-type]
            raise CommandError(
                _("Several workers share affinity, breakers and settings through Redis: set REDIS_URL first.")
            )
        if not options["no_migrate"]:
            migrate()
        host, port = options["host"], options["port"]
        admin_url = f"http://{host}:{port}/admin/"
        api_url = f"http://{host}:{port}/v1"
        if not get_user_model().objects.filter(is_superuser=True).exists():
            self.stdout.write(
                _(
                    "Sluice is starting on %(api)s. No admin user exists yet: create one with\n"
                    "  %(command)s\n"
                    "then sign in at %(admin)s to add providers and API keys."
                )
                % {
                    "api": api_url,
                    "command": f"{sys.executable} manage.py createsuperuser",
                    "admin": admin_url,
                }
            )
        else:
            self.stdout.write(
                _("Sluice is starting on %(api)s; admin at %(admin)s") % {"api": api_url, "admin": admin_url}
            )
        self.stdout.flush()
        if int(options["workers"]) > 1:  # type: ignore[arg-type]
            prepare_multiprocess_metrics()
        drain.run(
            "config.asgi:application",
            host=str(host),
            port=int(port),  # type: ignore[arg-type]
            workers=int(options["workers"]),  # type: ignore[arg-type]
            lifespan="on",
            **server_options(),  # read deadlines, header and WebSocket limits (as in the tests)
            access_log=bool(options["access_log"]),
            proxy_headers=True,
            forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS,
            server_header=False,
        )


# PostgreSQL advisory lock held while migrating (any fixed number; it only has to be the same everywhere).
MIGRATION_LOCK = 0x51_01CE


def migrate() -> None:
    """Nodes that start together on one PostgreSQL take turns: the first migrates, the others find it done."""
    if connection.vendor != "postgresql":
        call_command("migrate", interactive=False, verbosity=0)
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
        try:
            call_command("migrate", interactive=False, verbosity=0)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])


def prepare_multiprocess_metrics() -> Path:
    """Workers keep their metrics in files of one directory that /metrics merges; it must start empty
    (values of an earlier run would be added to this one's)."""
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="sluice-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # inherited by the worker processes
    return directory
