"""Form fields for a provider's model list, model redirects and extra headers: a list of names and
tables of pairs, validated with messages that say what is wrong, instead of raw JSON."""

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]{0,199}")
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")
# Set by the gateway itself: a provider cannot replace them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade"})
BLANK_ROWS = 3


def check_model_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise ValidationError(
            gettext("“%(name)s” is not a model name (letters, digits and . _ - : / @ +, no spaces).")
            % {"name": name}
        )


class ModelListField(forms.CharField):
    """A list of model names, one per line."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 40, "class": "sluice-model-list"})

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value or ""

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        names = [line.strip() for line in str(value or "").replace(",", "\n").splitlines()]
        return list(dict.fromkeys(n for n in names if n))  # in order, without duplicates

    def validate(self, value: list[str]) -> None:
        for name in value:
            check_model_name(name)


class PairsWidget(forms.Widget):
    """A table of key → value rows, with a few blank rows to add more (no script needed)."""

    def __init__(self, key_label: str, value_label: str, attrs: dict | None = None) -> None:
        super().__init__(attrs)
        self.key_label, self.value_label = key_label, value_label

    def format_value(self, value: Any) -> list[tuple[str, str]]:
        if isinstance(value, dict):
            return list(value.items())
        return list(value or [])

    def render(self, name: str, value: Any, attrs: dict | None = None, renderer: Any = None) -> SafeString:
        rows = self.format_value(value) + [("", "")] * BLANK_ROWS
        body = format_html_join(
            "",
            '<tr><td><input type="text" name="{0}-key" value="{1}" size="30" aria-label="{3}"></td>'
            '<td>→</td><td><input type="text" name="{0}-value" value="{2}" size="40" aria-label="{4}">'
            "</td></tr>",
            ((name, k, v, self.key_label, self.value_label) for k, v in rows),
        )
        return format_html(
            '<table class="sluice-pairs" id="id_{}"><thead><tr><th>{}</th><th></th><th>{}</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            name,
            self.key_label,
            self.value_label,
            body,
        )

    def value_from_datadict(self, data: Any, files: Any, name: str) -> list[tuple[str, str]]:
        keys, values = data.getlist(f"{name}-key"), data.getlist(f"{name}-value")
        return [(k.strip(), v.strip()) for k, v in zip(keys, values, strict=False) if k.strip() or v.strip()]

    def value_omitted_from_data(self, data: Any, files: Any, name: str) -> bool:
        return f"{name}-key" not in data


class PairsField(forms.Field):
    """Rows of (key, value) stored as a JSON object; rows with one side empty are errors."""

    def __init__(self, *, key_label: str, value_label: str, kind: str, **kwargs: Any) -> None:
        self.kind = kind
        kwargs.setdefault("required", False)
        super().__init__(widget=PairsWidget(key_label, value_label), **kwargs)

    def to_python(self, value: Any) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        pairs = list(value or [])
        errors = []
        out: dict[str, str] = {}
        for key, val in pairs:
            if not key or not val:
                errors.append(
                    gettext("Row “%(key)s → %(value)s” needs both sides.") % {"key": key, "value": val}
                )
                continue
            if key in out:
                errors.append(gettext("“%(key)s” appears twice.") % {"key": key})
            out[key] = val
        if errors:
            raise ValidationError(errors)
        return out

    def validate(self, value: dict[str, str]) -> None:
        super().validate(value)
        errors = []
        for key, val in value.items():
            try:
                if self.kind == "models":
                    check_model_name(key)
                    check_model_name(val)
                else:
                    check_header(key, val)
            except ValidationError as error:
                errors.extend(error.messages)
        if errors:
            raise ValidationError(errors)


def check_header(name: str, value: str) -> None:
    if not HEADER_NAME.fullmatch(name):
        raise ValidationError(gettext("“%(name)s” is not a valid HTTP header name.") % {"name": name})
    if name.lower() in RESERVED_HEADERS:
        raise ValidationError(
            gettext("“%(name)s” is set by the gateway and cannot be replaced.") % {"name": name}
        )
    if any(c in value for c in "\r\n\0"):
        raise ValidationError(gettext("The value of “%(name)s” contains a line break.") % {"name": name})


def provider_fields() -> dict[str, forms.Field]:
    return {
        "allowed_models": ModelListField(
            label=capfirst(_("allowed models")),
            required=False,
            help_text=_("One model name per line. Empty: the provider serves every model."),
        ),
        "model_redirects": PairsField(
            label=capfirst(_("model redirects")),
            key_label=_("requested model"),
            value_label=_("upstream model"),
            kind="models",
            help_text=_("A client asking for the model on the left is served the model on the right."),
        ),
        "extra_headers": PairsField(
            label=capfirst(_("extra headers")),
            key_label=_("header"),
            value_label=_("value"),
            kind="headers",
            help_text=_("HTTP headers added to every upstream request."),
        ),
    }
