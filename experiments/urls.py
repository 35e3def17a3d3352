from django.urls import path

from experiments import views

app_name = "experiments"

urlpatterns: list = [
    # A domain's experiments: the leaderboard (a page of its own and the domain page's Experiments
    # tab via htmx), its lineage tree, and chart data (compact JSON arrays).
    path("domain/<int:domain_id>/", views.experiment_domain_list, name="domain_list"),
    path("domain/<int:domain_id>/lineage/", views.experiment_lineage_tree, name="lineage"),
    # Experiments the audit held back (experiments/quarantine.py) and a person's verdict on one.
    path("domain/<int:domain_id>/quarantine/", views.experiment_quarantine_list, name="quarantine"),
    path("<int:pk>/quarantine/", views.experiment_quarantine_review, name="quarantine_review"),
    path("domain/<int:domain_id>/charts/<slug:kind>.json", views.experiment_chart_data, name="chart_data"),
    # Several experiments side by side: ?ids=1,2,3
    path("compare/", views.experiment_compare, name="compare"),
    # One experiment, its artifacts (download, or ?inline=1 for images), reproduce (POST, queued)
    # and the panel of its reproductions (polled while one runs).
    path("<int:pk>/", views.experiment_detail, name="detail"),
    path("<int:pk>/artifacts/<int:artifact_id>/", views.experiment_artifact, name="artifact"),
    path("<int:pk>/reproduce/", views.experiment_reproduce_view, name="reproduce"),
    path("<int:pk>/reproductions/", views.experiment_reproductions, name="reproductions"),
]
