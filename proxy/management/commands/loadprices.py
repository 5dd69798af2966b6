import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.translation import gettext as _

from proxy.models import ModelPrice

FIELDS = ("input_per_million", "cached_input_per_million", "output_per_million")


def parse(data: Any) -> dict[str, dict[str, Decimal]]:
    """{"model": {"input_per_million": 5, "cached_input_per_million": 0.5, "output_per_million": 30}, ...}
    (a list of objects with a "model" key is read too). Cached input defaults to the input price."""
    if isinstance(data, list):
        data = {row.get("model"): row for row in data if isinstance(row, dict)}
    if not isinstance(data, dict) or not data:
        raise CommandError(_("The file must hold a JSON object of model names to prices."))
    prices: dict[str, dict[str, Decimal]] = {}
    for model, row in data.items():
        if not isinstance(model, str) or not model.strip() or not isinstance(row, dict):
            raise CommandError(_("Not a price: %(entry)s") % {"entry": json.dumps({str(model): row})})
        try:
            values = {f: Decimal(str(row[f])) for f in FIELDS if row.get(f) is not None}
            values.setdefault("cached_input_per_million", values["input_per_million"])
            if "output_per_million" not in values or any(v < 0 for v in values.values()):
                raise KeyError
        except (KeyError, InvalidOperation):
            raise CommandError(_("Not a price: %(entry)s") % {"entry": json.dumps({model: row})}) from None
        prices[model.strip()] = values
    return prices


class Command(BaseCommand):
    help = _(
        "Load model prices (USD per million tokens) from a JSON file: "
        "new models are added, listed ones replaced."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help=_('A JSON file: {"model": {"input_per_million": …, …}}.'))
        parser.add_argument(
            "--replace", action="store_true", help=_("Delete every price the file does not list.")
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            data = json.loads(Path(options["file"]).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(
                _("Could not read %(file)s: %(error)s") % {"file": options["file"], "error": exc}
            ) from None
        prices = parse(data)
        with transaction.atomic():
            added = 0
            for model, values in prices.items():
                _price, created = ModelPrice.objects.update_or_create(model=model, defaults=values)
                added += created
            removed = 0
            if options["replace"]:
                removed, _detail = ModelPrice.objects.exclude(model__in=prices).delete()
        self.stdout.write(
            _("Prices loaded: %(added)d added, %(updated)d replaced, %(removed)d removed.")
            % {"added": added, "updated": len(prices) - added, "removed": removed}
        )
