import bisect
import datetime as dt
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from django.utils.translation import gettext as _

from providers.models import Provider
from proxy.models import ApiKey, RequestLog, Team, UsageDay
from proxy.usage import rollup
from proxy.usage.logwriter import COLUMNS, _insert

# Tens of models (the first the most used), served by a handful of providers.
MODELS = tuple(
    f"{family}{suffix}"
    for family in ("gpt-5.5", "gpt-5.4", "gpt-5.3-codex", "o4-deep", "gpt-5.2", "o3-mini")
    for suffix in ("", "-mini", "-pro", "-nano")
)
PROVIDERS = 5
KEYS, TEAMS, PEOPLE = 300, 20, 150
REFUSALS = ("invalid_api_key", "missing_required_parameter", "model_not_found", "invalid_json")
REASONS = ("setting_off", "known_unsupported", "upgrade_refused")
TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")
# A row before it is generated: every column of the log writer's, empty (the request log may gain columns
# without this command breaking).
EMPTY: dict[str, object] = dict.fromkeys(COLUMNS) | dict.fromkeys(TOKENS, 0)
EMPTY |= {c: "" for c in ("requested_model", "upstream_model", "error_code", "upstream_transport")}
EMPTY |= {c: "" for c in ("fallback_reason", "upstream_ws_url", "trace_id", "response_id", "session_id")}
EMPTY |= {"endpoint": "responses", "status": 200, "duration_ms": 1.0, "client_transport": "http"}
EMPTY |= {"cost": Decimal(0)}


def zipf(n: int) -> list[float]:
    """Weights of ``n`` things of which the first is used most, the second half as much, and so on."""
    return [1 / (i + 1) for i in range(n)]


@dataclass
class Key:
    """A generated key and how its turns look: its team and owner, its few models, its client."""

    pk: int
    team_id: int | None
    owner_id: int
    models: list[str]
    websocket: bool  # a Codex client on WebSocket (else HTTP)
    weight: float  # its share of the turns


class Fleet:
    """What the rows are spread over, as in an organisation: a few hundred keys of some teams and people,
    each using one to three of the models (the popular ones more), each model served by one provider (a
    third of them by a second one too), most turns in the working hours of weekdays."""

    def __init__(self, rng: random.Random, keys: list[Key], providers: list[int]) -> None:
        self.rng, self.keys, self.providers = rng, keys, providers
        self.cumulative = list(itertools.accumulate(k.weight for k in keys))
        self.served = {m: [providers[i % len(providers)]] for i, m in enumerate(MODELS)}
        for i, m in enumerate(MODELS[::3]):
            self.served[m].append(providers[(i + 1) % len(providers)])

    def key(self) -> Key:
        return self.keys[bisect.bisect(self.cumulative, self.rng.random() * self.cumulative[-1])]

    def row(self, when: dt.datetime) -> dict[str, object]:
        """One generated row's values (a column it does not name is left empty)."""
        rng, key = self.rng, self.key()
        values = EMPTY.copy()
        values |= {"created_at": when, "api_key_id": key.pk, "team_id": key.team_id, "owner_id": key.owner_id}
        if key.websocket:  # a few sessions a key an hour
            values["client_transport"] = "websocket"
            values["session_id"] = f"{key.pk:x}-{when:%y%m%d%H}-{rng.randrange(3)}"
        if rng.random() < 0.04:  # a refusal: no provider, no tokens; half of them without a key
            if rng.random() < 0.5:
                values |= {"api_key_id": None, "team_id": None, "owner_id": None, "session_id": ""}
            code = rng.choice(REFUSALS)
            values["status"] = 401 if code == "invalid_api_key" else 400
            values["error_code"] = code
            return values
        model = rng.choice(key.models)
        values |= self.usage(model)
        ttfe = rng.lognormvariate(6.3, 0.6)
        values |= {"time_to_first_event_ms": ttfe, "duration_ms": ttfe + rng.random() * 20_000}
        values["provider_id"] = self.served[model][0 if rng.random() < 0.85 else -1]
        values["status"] = 200 if rng.random() < 0.985 else 502
        values["upstream_transport"] = "http"
        if key.websocket:
            if rng.random() < 0.92:
                values["upstream_transport"] = "websocket"
            else:
                values["fallback_reason"] = rng.choice(REASONS)
        return values

    def usage(self, model: str) -> dict[str, object]:
        rng = self.rng
        input_tokens = rng.randint(200, 60_000)
        output = rng.randint(10, 4000)
        cost = Decimal(input_tokens * 2 + output * 8).scaleb(-6).quantize(Decimal("0.00000001"))
        return {
            "requested_model": model,
            "upstream_model": model,
            "input_tokens": input_tokens,
            "cached_input_tokens": rng.randint(0, input_tokens),
            "output_tokens": output,
            "reasoning_tokens": rng.randint(0, output),
            "cost": cost,
            "response_id": f"resp_{rng.getrandbits(64):x}",
        }


def hour_weight(hour: dt.datetime) -> float:
    """How busy an hour is: the working hours of weekdays (UTC) most, evenings a little, nights and
    weekends barely."""
    busy = 1.0 if 8 <= hour.hour < 18 else 0.15 if 6 <= hour.hour < 22 else 0.04
    return busy * (0.12 if hour.weekday() >= 5 else 1.0)


def moments(rng: random.Random, rows: int, days: int, end: dt.datetime) -> Iterator[dt.datetime]:
    """``rows`` times over the ``days`` days before ``end``, oldest first, spread over the hours by their
    weight."""
    first = end.replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=days)
    hours = [first + dt.timedelta(hours=h) for h in range(days * 24)]
    cumulative = list(itertools.accumulate(hour_weight(h) for h in hours))
    done = 0
    for hour, upto in zip(hours, cumulative, strict=True):
        count = round(rows * upto / cumulative[-1]) - done
        done += count
        for second in sorted(rng.random() * 3600 for _n in range(count)):
            yield hour + dt.timedelta(seconds=second)


class Command(BaseCommand):
    help = _("Fill the request log with generated rows, to measure the dashboard on a large log.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--days", type=int, default=90, help=_("Spread the rows over this many days."))
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--measure", action="store_true", help=_("Then time the dashboard's and the portal's pages.")
        )
        parser.add_argument(
            "--rebuild",
            action="store_true",
            help=_(
                "Sum the roll-ups once at the end, as manage.py rollup does, instead of with each batch as "
                "the log writer does (faster for millions of rows)."
            ),
        )
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
        # One transaction: a run that fails leaves neither rows nor the keys, people and providers it made.
        with transaction.atomic():
            fleet = Fleet(rng, *_keys_and_providers(rng))
            # Oldest first, as the log writer appends them: the table's physical order follows time, as in
            # a real log (which the range scans of the dashboard depend on).
            batch: list[tuple] = []
            add = not options["rebuild"]
            as_tuple = itemgetter(*COLUMNS)
            for when in moments(rng, rows, days, timezone.now().astimezone(dt.UTC)):
                batch.append(as_tuple(fleet.row(when)))
                if len(batch) == 10_000:
                    _write(batch, add)
                    batch = []
            _write(batch, add)
            if not add:
                end = timezone.now().astimezone(dt.UTC).date()
                for day in range(days + 1):
                    rollup.rebuild(end - dt.timedelta(days=day), end - dt.timedelta(days=day))
        self.stdout.write(
            _("Inserted %(rows)d rows in %(seconds).1f s.")
            % {"rows": rows, "seconds": time.perf_counter() - started}
        )
        if options["measure"]:
            for label, seconds, cpu in measure():
                self.stdout.write(
                    f"{label}: {seconds * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU in this process)"
                )
            call_command("measureportal", stdout=self.stdout)  # the portal's pages, on the same log


def _write(batch: list[tuple], add: bool) -> None:
    if batch:
        _insert(batch)
        if add:
            rollup.add(batch, COLUMNS)  # as the log writer does


def _keys_and_providers(rng: random.Random) -> tuple[list[Key], list[int]]:
    """The generated keys (named "generated-…", each of a generated team and person) and providers
    (disabled): those of an earlier run, completed to ``KEYS`` and ``PROVIDERS``."""
    user_model = get_user_model()
    people = [user_model.objects.get_or_create(username=f"filllogs-{i}")[0].pk for i in range(PEOPLE)]
    teams = [Team.objects.get_or_create(name=f"generated-team-{i}")[0].pk for i in range(TEAMS)]
    found = {k.name: k for k in ApiKey.objects.filter(name__startswith="generated-")}
    keys = []
    popular = zipf(len(MODELS))
    team_sizes = zipf(TEAMS)
    for i in range(KEYS):
        key = found.get(f"generated-{i}")
        if key is None:
            team = rng.choices(teams, team_sizes)[0]
            key = ApiKey(name=f"generated-{i}", owner_id=rng.choice(people), team_id=team)
            key.generate()
            key.save()
        models = list(dict.fromkeys(rng.choices(MODELS, popular, k=rng.randint(1, 3))))
        keys.append(
            Key(key.pk, key.team_id, key.owner_id, models, rng.random() < 0.6, rng.paretovariate(1.2))
        )
    providers = list(Provider.objects.filter(name__startswith="generated-").values_list("pk", flat=True))
    while len(providers) < PROVIDERS:
        p = Provider.objects.create(
            name=f"generated-{len(providers)}", base_url="http://127.0.0.1:9/v1", enabled=False
        )
        providers.append(p.pk)
    return keys, providers[:PROVIDERS]


def timed(run: Callable[[], object], runs: int = 3) -> tuple[float, float]:
    """The median wall time and CPU time of this process (SQLite works in it: its CPU time is what an idle
    machine would take, whatever else runs beside the measurement) of ``runs`` runs."""
    walls, cpus = [], []
    for _run in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure() -> list[tuple[str, float, float]]:
    """The usage dashboard's page, whole (queries, templates, charts) through Django's test client as a
    superuser, for the default range and filtered ones; then one day's ``rollup.rebuild``."""
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if connection.vendor == "postgresql" else "ANALYZE")
    admin, _created = get_user_model().objects.get_or_create(
        username="filllogs-measure", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(admin)
    today = timezone.now().astimezone(dt.UTC).date()
    busiest = UsageDay.objects.filter(day__gte=today - dt.timedelta(days=29)).exclude(api_key_id=0)
    busiest = busiest.values("api_key_id", "team_id").annotate(n=Sum("turns")).order_by("-n").first() or {}
    cases = [
        ("dashboard, default range (30 days)", {}),
        ("dashboard, 7 days", {"start": (today - dt.timedelta(days=6)).isoformat()}),
        ("dashboard, 30 days, the busiest key", {"key": busiest.get("api_key_id", "")}),
        ("dashboard, 30 days, its team", {"team": busiest.get("team_id", "")}),
        ("dashboard, 30 days, the most used model", {"model": MODELS[0]}),
        ("dashboard, 365 days", {"start": (today - dt.timedelta(days=364)).isoformat()}),
    ]
    out = []
    for label, params in cases:

        def page(params: dict = params) -> None:
            response = client.get("/admin/proxy/usage/", params)
            if response.status_code != 200:
                raise CommandError(f"{params}: {response.status_code}")

        out.append((label, *timed(page)))
    yesterday = today - dt.timedelta(days=1)
    out.append(("rollup.rebuild of one day", *timed(lambda: rollup.rebuild(yesterday, yesterday), 1)))
    return out
