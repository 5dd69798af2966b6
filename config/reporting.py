"""What Django's error reports may show: never a key, whether DEBUG is on or off.

Django's own filter hides frame variables only when DEBUG is off and only for functions marked with
``sensitive_variables``; the gateway's frames hold request headers (the client's key), provider records
(the provider's key) and raw keys under many names, so they are cleansed by name and by shape everywhere.
"""

import dataclasses
import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# Keys as Sluice issues them and as providers commonly shape them.
_KEY_SHAPE = re.compile(r"(sk-[A-Za-z0-9_\-]{2})[A-Za-z0-9_\-*.]{6,}")


class SecretSafeFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        r"API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|COOKIE|HEADERS|SUBPROTOCOL|^RAW$", flags=re.I
    )

    def is_active(self, request: Any) -> bool:
        return True  # the DEBUG page is where frame variables are shown at all

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> list[tuple[str, Any]]:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        return [(name, self.cleanse_setting(name, _plain(value))) for name, value in variables]

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        if isinstance(value, str):  # str(): django-axes' settings are lazy strings, which re cannot read
            value = _KEY_SHAPE.sub(r"\1***", str(value))
        elif isinstance(value, bytes) and b"sk-" in value:
            value = _KEY_SHAPE.sub(r"\1***", value.decode("latin-1")).encode("latin-1")
        return super().cleanse_setting(key, value)


def _plain(value: Any) -> Any:
    """A dataclass instance (a provider record, a client) as a dict, so its fields are cleansed by name."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__class__": type(value).__name__} | {
            f.name: getattr(value, f.name) for f in dataclasses.fields(value)
        }
    return value
