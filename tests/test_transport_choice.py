"""The transport decision is a pure function of settings, provider mode and what is known upstream."""

import pytest

from proxy.common.transport import Decision, FallbackReason, Transport, choose


@pytest.mark.parametrize(
    ("setting", "mode", "unsupported", "forced", "expected"),
    [
        (True, "auto", False, None, Decision(Transport.WEBSOCKET)),
        (True, "auto", True, None, Decision(Transport.HTTP, FallbackReason.KNOWN_UNSUPPORTED)),
        (False, "auto", False, None, Decision(Transport.HTTP, FallbackReason.SETTING_OFF)),
        (False, "always", False, None, Decision(Transport.HTTP, FallbackReason.SETTING_OFF)),
        (True, "always", True, None, Decision(Transport.WEBSOCKET, may_fall_back=False)),
        (True, "never", False, None, Decision(Transport.HTTP, FallbackReason.PROVIDER_NEVER)),
        (True, "never", False, "websocket", Decision(Transport.WEBSOCKET, may_fall_back=False)),
        (True, "auto", False, "http", Decision(Transport.HTTP, FallbackReason.FORCED_HTTP)),
    ],
)
def test_choose(setting, mode, unsupported, forced, expected):
    assert (
        choose(upstream_websockets=setting, provider_mode=mode, known_unsupported=unsupported, forced=forced)
        == expected
    )


def test_every_reason_has_a_label():
    assert all(str(label) for label in FallbackReason.labels)
