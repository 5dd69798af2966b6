"""One way to show an amount of US dollars in the admin: the dashboard's totals, tables, budgets and chart
tips, and the spend beside a key's or team's budget."""

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django import template
from django.utils import formats

register = template.Library()

_SMALLEST = Decimal("0.0001")


@register.filter
def money(value: Any) -> str:
    """Cents, and up to four decimals when an amount has them ($7.50, $0.001, $0.0014): a turn costs a
    fraction of a cent. An amount too small even for that is "<$0.0001", never a misleading $0.00.
    Localised like Django's ``floatformat`` (the decimal separator of the admin's language)."""
    amount = Decimal(value or 0)
    shown = amount.quantize(_SMALLEST, ROUND_HALF_UP)
    if amount > 0 and not shown:
        return "<$" + formats.number_format(_SMALLEST, 4)
    places = next(p for p in (2, 3, 4) if shown == shown.quantize(Decimal(1).scaleb(-p)))
    return "$" + formats.number_format(shown, places)
