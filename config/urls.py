from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from identity import views as identity_views
from proxy.server import probes
from proxy.usage import metrics

# /healthz, /readyz and /metrics: served by the lean handler too (config/asgi.py), whatever the Host.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

urlpatterns = [
    path("v1/", include("proxy.http.urls")),
    path("healthz", probes.healthz),
    path("readyz", probes.readyz),
    path("metrics", metrics.metrics_view),
    path("i18n/", include("django.conf.urls.i18n")),
    path("auth/", include("identity.urls")),
    path("scim/v2/", include("identity.scim_urls")),
    # Signing out of the admin also ends the identity provider's session of people who signed in there.
    path("admin/logout/", identity_views.sign_out),
    path("admin/", admin.site.urls),
    path("portal/", include("portal.urls")),
    path("", lambda request: redirect("admin:index")),
    # Where browsers look for an icon when a page names none; the admin's pages name this one.
    path("favicon.ico", RedirectView.as_view(url=static("sluice/favicon.svg"), permanent=True)),
]
