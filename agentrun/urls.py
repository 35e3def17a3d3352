from django.urls import path

from agentrun import views  # noqa: F401

app_name = "agentrun"

urlpatterns: list = [
]
