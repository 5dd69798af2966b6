"""List prices of OpenAI models, in USD per million tokens (input, cached input, output).

Source: OpenAI's API pricing page (https://developers.openai.com/api/docs/pricing), standard tier,
short context, as reported by third-party summaries of that page in June 2026 (gpt-5.5: 5.00 / 0.50 /
30.00; gpt-5.4 half of it; gpt-5.4-mini, gpt-5.4-nano, the -pro models) and the GitHub Copilot model
table for the Codex models (gpt-5.2, gpt-5.2-codex, gpt-5.3-codex). Older GPT-5 and GPT-4.1 rows are
the list prices published at their launch. Models without cached-input pricing are charged the input
price for cached tokens. Rows that already exist are left as they are: an operator's price wins, and
``manage.py loadprices`` replaces them on purpose.
"""

from decimal import Decimal

from django.db import migrations

PRICES: dict[str, tuple[str, str, str]] = {
    "gpt-5.5": ("5.00", "0.50", "30.00"),
    "gpt-5.5-pro": ("30.00", "30.00", "180.00"),
    "gpt-5.4": ("2.50", "0.25", "15.00"),
    "gpt-5.4-pro": ("30.00", "30.00", "180.00"),
    "gpt-5.4-mini": ("0.75", "0.075", "4.50"),
    "gpt-5.4-nano": ("0.20", "0.02", "1.25"),
    "gpt-5.3-codex": ("1.75", "0.175", "14.00"),
    "gpt-5.2": ("1.75", "0.175", "14.00"),
    "gpt-5.2-codex": ("1.75", "0.175", "14.00"),
    "gpt-5.1": ("1.25", "0.125", "10.00"),
    "gpt-5.1-codex": ("1.25", "0.125", "10.00"),
    "gpt-5.1-codex-max": ("1.25", "0.125", "10.00"),
    "gpt-5.1-codex-mini": ("0.25", "0.025", "2.00"),
    "gpt-5": ("1.25", "0.125", "10.00"),
    "gpt-5-codex": ("1.25", "0.125", "10.00"),
    "gpt-5-mini": ("0.25", "0.025", "2.00"),
    "gpt-5-nano": ("0.05", "0.005", "0.40"),
    "gpt-4.1": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "o3": ("2.00", "0.50", "8.00"),
    "o4-mini": ("1.10", "0.275", "4.40"),
}


def load(apps, schema_editor):
    ModelPrice = apps.get_model("proxy", "ModelPrice")
    for model, (given, cached, taken) in PRICES.items():
        ModelPrice.objects.get_or_create(
            model=model,
            defaults={
                "input_per_million": Decimal(given),
                "cached_input_per_million": Decimal(cached),
                "output_per_million": Decimal(taken),
            },
        )


def unload(apps, schema_editor):
    apps.get_model("proxy", "ModelPrice").objects.filter(model__in=PRICES).delete()


class Migration(migrations.Migration):
    dependencies = [("proxy", "0002_governance")]

    operations = [migrations.RunPython(load, unload)]
