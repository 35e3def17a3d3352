from django.urls import path

from experiments import views

app_name = "experiments"

urlpatterns: list = [
    # A domain's experiments: a page of its own and the domain page's Experiments tab (htmx).
    path("domain/<int:domain_id>/", views.experiment_domain_list, name="domain_list"),
    # One experiment, its artifacts (download, or ?inline=1 for images) and reproduce (POST).
    path("<int:pk>/", views.experiment_detail, name="detail"),
    path("<int:pk>/artifacts/<int:artifact_id>/", views.experiment_artifact, name="artifact"),
    path("<int:pk>/reproduce/", views.experiment_reproduce_view, name="reproduce"),
]
