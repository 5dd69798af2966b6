"""The price table: ``ModelPrice`` rows in a snapshot, and the price of a model (its own or its family's).
Read by the request-log writer (a row's cost), the limits (budgets) and the metrics (known models)."""

from typing import Any

from settings_app.runtime import Snapshot


def _load_prices() -> dict:
    from proxy.models import ModelPrice  # imported here: the models need Django's apps loaded

    return {p.model: p for p in ModelPrice.objects.all()}


model_prices: Snapshot[dict] = Snapshot("prices", _load_prices)


def price_for(prices: dict, model: str) -> Any:
    """The price of ``model``: its own, else that of the longest name it extends with a dash (a dated
    variant such as gpt-5.5-2026-04-23), else None."""
    if model in prices:
        return prices[model]
    best = None
    for name, price in prices.items():
        if model.startswith(name + "-") and (best is None or len(name) > len(best[0])):
            best = (name, price)
    return best[1] if best else None
