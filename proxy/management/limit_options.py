"""The limit flags that createteam and createapikey share (deployment scripts rely on their names)."""

from argparse import ArgumentTypeError
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser
from django.utils.translation import gettext as _

# The flags' types raise ArgumentTypeError, not CommandError: raised while argparse parses, a CommandError
# escaped as a traceback; argparse turns this one into its usage line and exit status 2 (and call_command
# into a CommandError).


def _budget(value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ArgumentTypeError(_("Not an amount in USD: %(value)s") % {"value": value}) from None
    if amount < 0 or not amount.is_finite():
        raise ArgumentTypeError(_("Not an amount in USD: %(value)s") % {"value": value})
    return amount


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ArgumentTypeError(_("Not a whole number: %(value)s") % {"value": value}) from None
    if number < 0:
        raise ArgumentTypeError(_("Not a whole number: %(value)s") % {"value": value})
    return number


def add_limit_arguments(parser: CommandParser) -> None:
    parser.add_argument("--rpm", type=_count, help=_("Requests per minute."))
    parser.add_argument(
        "--tpm", type=_count, help=_("Tokens per minute (input and output of finished turns).")
    )
    parser.add_argument("--concurrency", type=_count, help=_("Turns in flight at once."))
    parser.add_argument("--sockets", type=_count, help=_("Open WebSocket connections."))
    parser.add_argument("--daily-budget", type=_budget, metavar="USD", help=_("Spend per UTC day, in USD."))
    parser.add_argument(
        "--monthly-budget", type=_budget, metavar="USD", help=_("Spend per calendar month, in USD.")
    )
    parser.add_argument("--models", help=_("Comma-separated allowed models (default: all)."))


def apply_limits(obj: Any, options: dict[str, Any]) -> None:
    for name in ("rpm", "tpm", "concurrency", "sockets", "daily_budget", "monthly_budget"):
        if options.get(name) is not None:
            setattr(obj, name, options[name])
    if options.get("models") is not None:
        obj.allowed_models = [m.strip() for m in options["models"].split(",") if m.strip()]


def validated(obj: Any) -> None:
    """Run the model's validation and report a failure as the command's error, not a traceback
    (e.g. a budget with more decimal places than the column keeps)."""
    try:
        obj.full_clean()
    except ValidationError as exc:
        raise CommandError(
            "; ".join(
                f"--{field.replace('_', '-')}: {' '.join(messages)}"
                for field, messages in exc.message_dict.items()
            )
        ) from None
