from django.urls import path, re_path

from identity import scim

urlpatterns = [
    path("Users", scim.users),
    path("Users/<str:pk>", scim.user),
    path("Groups", scim.groups),
    path("Groups/<str:pk>", scim.group),
    path("ServiceProviderConfig", scim.service_provider_config),
    path("Schemas", scim.schemas),
    path("Schemas/<str:pk>", scim.schemas),
    path("ResourceTypes", scim.resource_types),
    path("ResourceTypes/<str:pk>", scim.resource_types),
    re_path(r"^(?P<rest>.*)$", scim.not_found),
]
