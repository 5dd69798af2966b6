import asyncio

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from providers.models import Provider, Verdict
from proxy.admin.provider_test import Report, run_test, save_result
from proxy.common.wire import WireError
from proxy.upstream.http import close_session
from proxy.usage import logwriter


def format_report(report: Report) -> list[str]:
    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:,.1f} ms"

    lines = [
        f"{_('Verdict')}: {Verdict(report.verdict).label}",
        f"{_('Transport')}: {report.transport_label or '—'}",
    ]
    if report.fallback_reason:
        lines.append(f"{_('Fallback reason')}: {report.fallback_label}")
    lines += [
        f"{_('Handshake')}: {ms(report.handshake_ms)}",
        f"{_('First event')}: {ms(report.first_event_ms)}",
        f"{_('Total')}: {ms(report.total_ms)}",
        f"{_('Events')}: {report.events}",
        f"{_('Model')}: {report.model or '—'}",
        f"{_('Tokens (in / out)')}: {report.input_tokens} / {report.output_tokens}",
    ]
    lines += [f"{_('Note')}: {note}" for note in report.notes]
    if report.error:
        lines.append(f"{_('Error')}: {report.error}")
    return lines


class Command(BaseCommand):
    help = "Send a small real Responses request to a provider and report how it went."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--transport", choices=("auto", "websocket", "http"), default="auto")
        parser.add_argument("--model")

    @staticmethod
    async def run(provider: Provider, transport: str, model: object) -> Report:
        try:
            return await run_test(provider, transport=transport, model=model)  # type: ignore[arg-type]
        finally:
            await close_session()

    def handle(self, *args: object, **options: object) -> None:
        provider = Provider.objects.filter(name=options["name"]).first()
        if provider is None:
            raise CommandError(_("No provider named %(name)s.") % {"name": options["name"]})
        try:
            report = asyncio.run(self.run(provider, str(options["transport"]), options["model"]))
        except WireError as error:
            raise CommandError(error.message) from None
        save_result(provider, report)
        logwriter.flush()
        for line in format_report(report):
            self.stdout.write(line)
        if report.verdict == Verdict.RED:
            raise CommandError(_("The provider test failed."))
