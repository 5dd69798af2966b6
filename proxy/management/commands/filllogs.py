import datetime as dt
import random
import time
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils.translation import gettext as _

from providers.models import Provider
from proxy.admin import dashboard
from proxy.models import ApiKey, RequestLog
from proxy.usage import rollup
from proxy.usage.logwriter import COLUMNS, _insert

MODELS = ("gpt-5.5", "gpt-5.5-mini", "gpt-5.4", "o4-deep", "gpt-5.5-pro")
REFUSALS = ("invalid_api_key", "missing_required_parameter", "model_not_found", "invalid_json")
REASONS = ("", "", "", "", "", "setting_off", "known_unsupported", "upgrade_refused")


def fake_row(
    rng: random.Random, when: float, keys: dict[int, dict[str, object]], providers: list[int]
) -> tuple:
    """One generated row, in the order of the log writer's columns (a column it does not name is left
    empty, so that the request log can gain columns without this command breaking). ``keys`` maps each
    key's id to the columns a row copies from its key (team, owner)."""
    values = _fake_values(rng, when, list(keys), providers)
    values |= keys.get(values["api_key_id"], {})  # type: ignore[arg-type]
    return tuple(values.get(column) for column in COLUMNS)


def _fake_values(rng: random.Random, when: float, keys: list[int], providers: list[int]) -> dict[str, object]:
    created = dt.datetime.fromtimestamp(when, dt.UTC)
    empty = {"endpoint": "responses", "requested_model": "", "upstream_model": "", "error_code": ""}
    empty |= {c: "" for c in ("upstream_transport", "fallback_reason", "upstream_ws_url", "trace_id")}
    empty |= {"response_id": "", "session_id": ""}
    if rng.random() < 0.04:  # a refusal: no provider, no tokens
        return empty | {
            "created_at": created,
            "api_key_id": None if rng.random() < 0.5 else rng.choice(keys),
            "status": 401 if rng.random() < 0.5 else 400,
            "error_code": rng.choice(REFUSALS),
            **dict.fromkeys(("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"), 0),
            "cost": Decimal(0),
            "duration_ms": 1.0,
            "client_transport": "http",
        }
    input_tokens = rng.randint(200, 60_000)
    cached = rng.randint(0, input_tokens)
    output = rng.randint(10, 4000)
    reasoning = rng.randint(0, output)
    ws = rng.random() < 0.6
    ttfe = rng.lognormvariate(6.3, 0.6)
    model = rng.choice(MODELS)
    return empty | {
        "created_at": created,
        "api_key_id": rng.choice(keys),
        "provider_id": rng.choice(providers),
        "requested_model": model,
        "upstream_model": model,
        "status": 200 if rng.random() < 0.98 else 502,
        "input_tokens": input_tokens,
        "cached_input_tokens": cached,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
        "cost": Decimal(input_tokens * 2 + output * 8).scaleb(-6).quantize(Decimal("0.00000001")),
        "time_to_first_event_ms": ttfe,
        "duration_ms": ttfe + rng.random() * 20_000,
        "client_transport": "websocket" if ws else "http",
        "upstream_transport": "websocket" if ws and rng.random() < 0.8 else "http",
        "fallback_reason": rng.choice(REASONS) if ws else "",
        "response_id": f"resp_{rng.getrandbits(64):x}",
    }


class Command(BaseCommand):
    help = _("Fill the request log with generated rows, to measure the dashboard on a large log.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=90, help=_("Spread the rows over this many days."))
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--measure", action="store_true", help=_("Then time the dashboard's queries."))
        parser.add_argument(
            "--into-existing-database",
            action="store_true",
            help=_("Add the rows even if the request log already holds rows (they cannot be told apart)."),
        )

    def handle(self, *args: object, **options: object) -> None:
        # Generated rows are not marked: once among real ones (a production log), they are spend no one can
        # take back out. So a log that holds rows is refused unless the operator says so.
        if not options["into_existing_database"] and RequestLog.objects.exists():
            raise CommandError(
                _(
                    "The request log of this database already holds rows, and generated rows cannot be told "
                    "from them afterwards. Run filllogs on a new database, or pass --into-existing-database."
                )
            )
        rng = random.Random(options["seed"])
        rows, days = int(options["rows"]), int(options["days"])  # type: ignore[arg-type]
        if rows < 1 or days < 1:
            raise CommandError(_("--rows and --days must be at least 1."))
        started = time.perf_counter()
        # One transaction: a run that fails leaves neither rows nor the keys, user and providers it made.
        with transaction.atomic():
            keys, providers = _keys_and_providers()
            # Oldest first, as the log writer appends them: the table's physical order follows time, as in
            # a real log (which the range scans of the dashboard depend on).
            first, step = time.time() - days * 86400, days * 86400 / rows
            done = 0
            while done < rows:
                n = min(10_000, rows - done)
                batch = [fake_row(rng, first + (done + i) * step, keys, providers) for i in range(n)]
                _insert(batch)
                rollup.add(batch, COLUMNS)  # as the log writer does
                done += n
        self.stdout.write(
            _("Inserted %(rows)d rows in %(seconds).1f s.")
            % {"rows": rows, "seconds": time.perf_counter() - started}
        )
        if options["measure"]:
            for label, seconds, cpu in measure():
                self.stdout.write(
                    f"{label}: {seconds * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU in this process)"
                )


def _keys_and_providers() -> tuple[dict[int, dict[str, object]], list[int]]:
    """Forty keys and four providers to spread the rows over: the existing ones, completed with generated
    ones (owned by a user named "filllogs", providers disabled)."""
    owner, _created = get_user_model().objects.get_or_create(username="filllogs")
    keys = {
        pk: {"team_id": team, "owner_id": owner_id, "key_name": name}
        for pk, team, owner_id, name in ApiKey.objects.order_by("pk").values_list(
            "pk", "team_id", "owner_id", "name"
        )[:40]
    }
    while len(keys) < 40:
        key = ApiKey(name=f"generated-{len(keys)}", owner=owner)
        key.generate()
        key.save()
        keys[key.pk] = {"team_id": None, "owner_id": owner.pk, "key_name": key.name}
    providers = list(Provider.objects.values_list("pk", flat=True)[:4])
    while len(providers) < 4:
        p = Provider.objects.create(
            name=f"generated-{len(providers)}", base_url="http://127.0.0.1:9/v1", enabled=False
        )
        providers.append(p.pk)
    return keys, providers


def measure() -> list[tuple[str, float, float]]:
    """The dashboard's aggregates, timed as the page runs them (the default range and filtered ones): wall
    time, and the CPU time of this process (SQLite works in it: its CPU time is what an idle machine
    would take, whatever else runs beside the measurement)."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE proxy_requestlog" if connection.vendor == "postgresql" else "ANALYZE")
    key = ApiKey.objects.order_by("pk").values_list("pk", flat=True).first()
    cases = [
        ("default range (30 days)", {}),
        ("7 days", {"start": (dt.date.today() - dt.timedelta(days=6)).isoformat()}),
        ("30 days, one key", {"key": str(key)}),
        ("30 days, one model", {"model": "gpt-5.5"}),
        ("365 days", {"start": (dt.date.today() - dt.timedelta(days=364)).isoformat()}),
    ]
    out = []
    for label, params in cases:
        started, cpu = time.perf_counter(), time.process_time()
        dashboard.usage(dashboard.parse_filters(params))
        out.append((label, time.perf_counter() - started, time.process_time() - cpu))
    f = dashboard.parse_filters({})
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time.min, dt.UTC)
    parts = [
        ("30 days: the roll-up's part", lambda: dashboard.tops(dashboard.rolled(f), ["api_key_id"])),
        ("30 days: latency percentiles (the rows)", lambda: dashboard.percentiles(dashboard.queryset(f), {})),
        ("rebuilding 30 days of roll-up", lambda: rollup.rebuild(end - dt.timedelta(days=30), end)),
    ]
    for label, run in parts:
        started, cpu = time.perf_counter(), time.process_time()
        run()
        out.append((label, time.perf_counter() - started, time.process_time() - cpu))
    return out
