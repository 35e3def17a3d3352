from django.urls import path

from knowledge import views  # noqa: F401

app_name = "knowledge"

urlpatterns: list = [
]
