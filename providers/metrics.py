"""The providers' own metrics: whether each one's circuit breaker is open, labelled with the provider's
name (``proxy.usage.metrics`` labels the turns with the same names, and serves both on ``/metrics``)."""

from prometheus_client import Gauge

from providers.registry import enabled_providers

breaker_open_until = Gauge(
    "sluice_breaker_open_until_seconds",
    "Unix time until which the provider's circuit breaker is open; 0 when closed. "
    "Open now: sluice_breaker_open_until_seconds > time().",
    ["provider"],
    multiprocess_mode="mostrecent",
)
_provider_names: dict[int, str] = {}


def provider_name(provider_id: int | None) -> str:
    """The provider's name for a label; looked up once per id (writer thread, where the ORM may run)."""
    if provider_id is None:
        return ""
    name = _provider_names.get(provider_id)
    if name is None:
        from providers.models import Provider  # imported here: the models need Django's apps loaded

        name = Provider.objects.filter(pk=provider_id).values_list("name", flat=True).first() or str(
            provider_id
        )
        _provider_names[provider_id] = name
    return name


def breaker_opened(provider_id: int, until: float) -> None:
    breaker_open_until.labels(provider_name_cached(provider_id)).set(until)


def breaker_closed(provider_id: int) -> None:
    breaker_open_until.labels(provider_name_cached(provider_id)).set(0)


def provider_name_cached(provider_id: int) -> str:
    """In the event loop: no query, the registry snapshot's name (or the id until the writer learns it)."""
    for info in enabled_providers._value or ():  # the last loaded value, without a refresh
        if info.id == provider_id:
            return info.name
    return _provider_names.get(provider_id, str(provider_id))
