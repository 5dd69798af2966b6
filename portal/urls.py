from django.contrib.auth import views as auth_views
from django.urls import path

from portal import keys, views

app_name = "portal"

urlpatterns = [
    path("", views.teams, name="teams"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="portal:login"), name="logout"),
    path("keys/", keys.keys, name="keys"),
    path("keys/<int:key_id>/revoke/", keys.revoke, name="revoke"),
    path("keys/<int:key_id>/rotate/", keys.rotate, name="rotate"),
    path("usage/", views.usage, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("teams/<int:team_id>/", views.team, name="team"),
]
