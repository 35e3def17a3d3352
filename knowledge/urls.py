from django.urls import path

from knowledge import views

app_name = "knowledge"

urlpatterns = [
    # Search across domains (with no query: the newest active atoms).
    path("", views.knowledge_search, name="search"),
    # A domain's knowledge: a full page, and the domain page's Knowledge tab (htmx).
    path("domain/<int:domain_id>/", views.knowledge_domain_list, name="domain_list"),
    # One atom with its version history and evidence.
    path("<int:pk>/", views.knowledge_detail, name="detail"),
]
