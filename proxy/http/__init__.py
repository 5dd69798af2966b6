"""HTTP ingress: the Responses API family on /v1 as async Django views, and their ASGI handler."""
