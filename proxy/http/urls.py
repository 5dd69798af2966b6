from django.urls import path, re_path

from proxy.http import views

urlpatterns = [
    path("responses", views.create_response),
    path("responses/compact", views.compact),
    path("responses/input_tokens", views.input_tokens),
    path("responses/<str:rid>", views.response_detail),
    path("responses/<str:rid>/cancel", views.cancel),
    path("responses/<str:rid>/input_items", views.input_items),
    path("models", views.models),
    path("models/<path:name>", views.model_detail),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]
