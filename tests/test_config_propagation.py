"""Admin changes reach every process through the version in Django's cache, without a restart."""

import pytest

from settings_app.runtime import Snapshot, _load_settings, system_settings
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_settings_change_reaches_a_process_that_did_not_make_it(settings):
    from settings_app.models import SystemSettings

    settings.SLUICE_CONFIG_POLL_SECONDS = 0.2
    other_process = Snapshot("settings", _load_settings, register=False)
    assert other_process.get().client_websockets is True
    row = SystemSettings.load()
    row.client_websockets = False
    row.save()
    assert system_settings.get().client_websockets is False, "the changing process sees it at once"
    assert other_process.get().client_websockets is True, "another process keeps its snapshot until it polls"
    assert wait_until(lambda: other_process.get().client_websockets is False, timeout=2)


def test_provider_and_key_changes_are_seen(settings):
    from providers.registry import enabled_providers
    from proxy.governance.auth import keys
    from proxy.models import hash_key
    from tests.conftest import make_key, make_provider

    settings.SLUICE_CONFIG_POLL_SECONDS = 60  # only the local invalidation can make these pass
    assert enabled_providers.get() == ()
    provider = make_provider(None, name="p1")
    assert [p.name for p in enabled_providers.get()] == ["p1"]
    provider.enabled = False
    provider.save()
    assert enabled_providers.get() == ()
    key, raw = make_key()
    assert hash_key(raw) in keys.get()
    key.delete()
    assert hash_key(raw) not in keys.get()


def test_environment_override_wins_and_is_reported(settings):
    settings.SLUICE_FORCE_UPSTREAM_WEBSOCKETS = "off"
    from settings_app.runtime import invalidate_all

    invalidate_all()
    runtime = system_settings.get()
    assert runtime.upstream_websockets is False and runtime.upstream_websockets_forced is True
    assert runtime.client_websockets is True and runtime.client_websockets_forced is False
