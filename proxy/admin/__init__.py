"""The admin's pages: the model admins, the usage dashboard, key limits, sessions, the provider test."""

# Django's admin autodiscovery imports proxy.admin: importing the model admins registers them.
from proxy.admin import modeladmins  # noqa: F401
