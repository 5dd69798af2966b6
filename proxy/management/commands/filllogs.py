import datetime as dt
import random
import time
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils.translation import gettext as _

from providers.models import Provider
from proxy import dashboard
from proxy.logwriter import COLUMNS, _insert
from proxy.models import ApiKey

MODELS = ("gpt-5.5", "gpt-5.5-mini", "gpt-5.4", "o4-deep", "gpt-5.5-pro")
REFUSALS = ("invalid_api_key", "missing_required_parameter", "model_not_found", "invalid_json")
REASONS = ("", "", "", "", "", "setting_off", "known_unsupported", "upgrade_refused")


# The columns the log writer has that the rows below leave to their defaults: named here, so that a new
# column of the writer fails loudly until this command says what it holds.
LATER_COLUMNS = ("owner_id", "trace_id")
_KNOWN = len(COLUMNS) - len(LATER_COLUMNS)


def fake_row(
    rng: random.Random, when: float, keys: list[int], providers: list[int], owners: dict[int, int]
) -> tuple:
    base = _base_row(rng, when, keys, providers)
    key = base[1]
    return (*base, owners.get(key) if key is not None else None, "")


def _base_row(rng: random.Random, when: float, keys: list[int], providers: list[int]) -> tuple:
    created = dt.datetime.fromtimestamp(when, dt.UTC)
    if rng.random() < 0.04:  # a refusal: no provider, no tokens
        return (
            created,
            None if rng.random() < 0.5 else rng.choice(keys),
            None,
            "responses",
            "",
            "",
            401 if rng.random() < 0.5 else 400,
            rng.choice(REFUSALS),
            0,
            0,
            0,
            0,
            Decimal(0),
            None,
            1.0,
            "http",
            "",
            "",
            None,
            "",
            "",
            "",
            None,
        )
    input_tokens = rng.randint(200, 60_000)
    cached = rng.randint(0, input_tokens)
    output = rng.randint(10, 4000)
    reasoning = rng.randint(0, output)
    ws = rng.random() < 0.6
    ttfe = rng.lognormvariate(6.3, 0.6)
    cost = Decimal(input_tokens * 2 + output * 8).scaleb(-6).quantize(Decimal("0.00000001"))
    return (
        created,
        rng.choice(keys),
        rng.choice(providers),
        "responses",
        m := rng.choice(MODELS),
        m,
        200 if rng.random() < 0.98 else 502,
        "",
        input_tokens,
        cached,
        output,
        reasoning,
        cost,
        ttfe,
        ttfe + rng.random() * 20_000,
        "websocket" if ws else "http",
        "websocket" if ws and rng.random() < 0.8 else "http",
        rng.choice(REASONS) if ws else "",
        None,
        "",
        f"resp_{rng.getrandbits(64):x}",
        "",
        None,
    )


class Command(BaseCommand):
    help = _("Fill the request log with generated rows, to measure the dashboard on a large log.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=90, help=_("Spread the rows over this many days."))
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--measure", action="store_true", help=_("Then time the dashboard's queries."))

    def handle(self, *args: object, **options: object) -> None:
        rng = random.Random(options["seed"])
        rows, days = int(options["rows"]), int(options["days"])  # type: ignore[arg-type]
        owner, _created = get_user_model().objects.get_or_create(username="filllogs")
        keys = list(ApiKey.objects.values_list("pk", flat=True)[:40])
        while len(keys) < 40:
            key = ApiKey(name=f"generated-{len(keys)}", owner=owner)
            key.generate()
            key.save()
            keys.append(key.pk)
        providers = list(Provider.objects.values_list("pk", flat=True)[:4])
        while len(providers) < 4:
            p = Provider.objects.create(
                name=f"generated-{len(providers)}", base_url="http://127.0.0.1:9/v1", enabled=False
            )
            providers.append(p.pk)
        # Oldest first, as the log writer appends them: the table's physical order follows time, as in a
        # real log (which the range scans of the dashboard depend on).
        first, step = time.time() - days * 86400, days * 86400 / rows
        started = time.perf_counter()
        done = 0
        if COLUMNS[_KNOWN:] != LATER_COLUMNS:
            raise CommandError(f"filllogs does not know the request log's columns {COLUMNS[_KNOWN:]}")
        owners = dict(ApiKey.objects.filter(pk__in=keys).values_list("pk", "owner_id"))
        while done < rows:
            n = min(10_000, rows - done)
            batch = [fake_row(rng, first + (done + i) * step, keys, providers, owners) for i in range(n)]
            with transaction.atomic():
                _insert(batch)
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
    return out
