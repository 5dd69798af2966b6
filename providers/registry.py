"""The enabled providers as plain immutable values, refreshed in every process when one changes."""

from dataclasses import dataclass, field

from settings_app.runtime import Snapshot


@dataclass(frozen=True)
class ProviderInfo:
    id: int
    name: str
    base_url: str
    api_key: str
    priority: int
    weight: int
    allowed_models: frozenset[str]
    model_redirects: dict[str, str] = field(hash=False)
    extra_headers: dict[str, str] = field(hash=False)
    connect_timeout: float
    first_byte_timeout: float
    idle_timeout: float
    proxy_url: str
    websocket_mode: str

    def serves(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models or model in self.model_redirects

    def upstream_model(self, model: str) -> str:
        return self.model_redirects.get(model, model)

    @property
    def websocket_url(self) -> str:
        """The Responses WebSocket endpoint derived from the base URL, as clients derive it."""
        base = self.base_url.rstrip("/")
        if base.startswith("https://"):
            base = "wss://" + base[len("https://") :]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://") :]
        return base + "/responses"

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def info_from_model(p: object) -> ProviderInfo:
    return ProviderInfo(
        id=p.pk,  # type: ignore[attr-defined]
        name=p.name,  # type: ignore[attr-defined]
        base_url=p.base_url,  # type: ignore[attr-defined]
        api_key=p.api_key,  # type: ignore[attr-defined]
        priority=p.priority,  # type: ignore[attr-defined]
        weight=max(1, p.weight),  # type: ignore[attr-defined]
        allowed_models=frozenset(p.allowed_models or ()),  # type: ignore[attr-defined]
        model_redirects=dict(p.model_redirects or {}),  # type: ignore[attr-defined]
        extra_headers=dict(p.extra_headers or {}),  # type: ignore[attr-defined]
        connect_timeout=p.connect_timeout,  # type: ignore[attr-defined]
        first_byte_timeout=p.first_byte_timeout,  # type: ignore[attr-defined]
        idle_timeout=p.idle_timeout,  # type: ignore[attr-defined]
        proxy_url=p.proxy_url,  # type: ignore[attr-defined]
        websocket_mode=p.websocket_mode,  # type: ignore[attr-defined]
    )


def _load() -> tuple[ProviderInfo, ...]:
    from providers.models import Provider  # imported here: the models need Django's apps loaded

    return tuple(info_from_model(p) for p in Provider.objects.filter(enabled=True).order_by("priority", "pk"))


enabled_providers: Snapshot[tuple[ProviderInfo, ...]] = Snapshot("providers", _load)
