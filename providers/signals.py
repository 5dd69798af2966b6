"""What the providers tell other apps (alerts, for one) without importing them; ``proxy.usage.signals`` names
it beside the gateway's own. Receivers run in the sender's thread and must only queue work."""

from django.dispatch import Signal

# A provider's circuit breaker opened (opened=True) or closed: provider_id.
breaker_changed = Signal()
