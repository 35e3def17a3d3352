from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from dojo_site.api import api, redoc

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="domains:list", permanent=False)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/redoc", redoc, name="api-redoc"),
    path("api/", api.urls),
    # Browsers ask for /favicon.ico whatever the page says.
    path("favicon.ico", RedirectView.as_view(url=static("dojo/favicon.svg"), permanent=True)),
    path("domains/", include("domains.urls")),
    path("experiments/", include("experiments.urls")),
    path("knowledge/", include("knowledge.urls")),
    path("runs/", include("agentrun.urls")),
]
