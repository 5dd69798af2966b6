from django.urls import path

from identity import views

app_name = "identity"
urlpatterns = [
    path("oidc/login/", views.oidc_login, name="oidc-login"),
    path("oidc/callback/", views.oidc_callback, name="oidc-callback"),
    path("logout/", views.sign_out, name="logout"),
]
