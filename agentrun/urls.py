from django.urls import path

from agentrun import views

app_name = "agentrun"

urlpatterns = [
    # Every run, newest first.
    path("", views.run_list, name="list"),
    # A domain's runs with the start form: the domain page's Runs tab (htmx) or a page of its own.
    path("domain/<int:domain_id>/", views.run_domain_list, name="domain_list"),
    path("domain/<int:domain_id>/start/", views.run_start_view, name="start"),
    # Results of domains (best, counts, active run, trend): the domains list's column and the
    # domain overview's card, loaded by the domains pages with htmx.
    path("domains/results/", views.domains_results, name="domains_results"),
    path("domain/<int:domain_id>/results/", views.domain_results, name="domain_results"),
    # The live run page, the partial it polls (events after a cursor), and the stop button.
    path("<int:pk>/", views.run_detail, name="detail"),
    path("<int:pk>/poll/", views.run_poll, name="poll"),
    path("<int:pk>/earlier/", views.run_earlier, name="earlier"),
    path("<int:pk>/metrics.json", views.run_metrics, name="metrics"),
    path("<int:pk>/stop/", views.run_stop, name="stop"),
]
