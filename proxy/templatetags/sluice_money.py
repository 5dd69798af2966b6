"""One way to show an amount of US dollars in the admin: the dashboard's totals, tables, budgets and chart
tips, and the spend beside a key's or team's budget."""

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django import template
from django.utils import formats

register = template.Library()

CENT = Decimal("0.01")


@register.filter
def money(value: Any) -> str:
    """One format for every amount: cents with the language's digit grouping ($1,234.50, $7.50), so that
    amounts side by side line up. An amount under a cent (a turn often costs less) keeps two significant
    digits ($0.0014, $0.000026): shown as it is, never as a misleading $0.00."""
    amount = Decimal(value or 0)
    if not amount or abs(amount) >= CENT:
        return _dollars(amount.quantize(CENT, ROUND_HALF_UP), 2)
    exponent = amount.adjusted()  # -3 for 0.0014
    shown = amount.quantize(Decimal(1).scaleb(exponent - 1), ROUND_HALF_UP).normalize()
    return _dollars(shown, max(-shown.as_tuple().exponent, 2))  # type: ignore[operator]


def _dollars(amount: Decimal, places: int) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}${formats.number_format(abs(amount), places, force_grouping=True)}"
