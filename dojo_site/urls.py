from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from dojo_site.api import api

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="domains:list", permanent=False)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("domains/", include("domains.urls")),
    path("experiments/", include("experiments.urls")),
    path("knowledge/", include("knowledge.urls")),
    path("runs/", include("agentrun.urls")),
]
