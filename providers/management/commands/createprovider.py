from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from providers.models import Provider, WebSocketMode


class Command(BaseCommand):
    help = _("Create or update an upstream provider.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--base-url",
            required=True,
            help=_("The API root including /v1, e.g. https://api.openai.com/v1."),
        )
        parser.add_argument("--api-key", required=True)
        parser.add_argument("--priority", type=int, default=100)
        parser.add_argument("--weight", type=int, default=1)
        parser.add_argument("--websocket", choices=WebSocketMode.values, default=WebSocketMode.AUTO)
        parser.add_argument("--models", default="", help=_("Comma-separated allowed models (default: all)."))

    def handle(self, *args: object, **options: object) -> None:
        provider = Provider.objects.filter(name=options["name"]).first() or Provider(name=options["name"])
        created = provider.pk is None
        provider.base_url = options["base_url"]
        provider.priority = options["priority"]
        provider.weight = options["weight"]
        provider.websocket_mode = options["websocket"]
        provider.allowed_models = [m.strip() for m in str(options["models"]).split(",") if m.strip()]
        provider.enabled = True
        provider.set_api_key(str(options["api_key"]))
        try:
            provider.full_clean()
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        provider.save()
        self.stdout.write(
            (
                _("Created provider “%(name)s” (id %(id)s).")
                if created
                else _("Updated provider “%(name)s” (id %(id)s).")
            )
            % {"name": provider.name, "id": provider.pk}
        )
