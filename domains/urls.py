from django.urls import path

from domains import views  # noqa: F401

app_name = "domains"

urlpatterns: list = [
]
