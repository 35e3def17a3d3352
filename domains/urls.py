from django.urls import path

from domains import views

app_name = "domains"

urlpatterns: list = [
    # Domains: list, create, the domain page and its PROGRAM.md / SETUP.md editors.
    path("", views.domain_list, name="list"),
    path("new/", views.domain_new, name="new"),
    path("<int:pk>/", views.domain_detail, name="detail"),
    path("<int:pk>/files/<str:which>/", views.domain_file, name="file"),
    # Members & settings (owner only): the interpreter, env vars, the holdout flag, who has which role.
    path("<int:pk>/settings/", views.domain_settings, name="settings"),
    path("<int:pk>/members/", views.domain_member_add, name="member_add"),
    path("<int:pk>/members/<str:username>/remove/", views.domain_member_delete, name="member_remove"),
    # The workspace panel: status, environment build (with its log), scan and suggestions.
    path("<int:pk>/workspace/", views.domain_workspace, name="workspace"),
    path("<int:pk>/workspace/setup/", views.domain_workspace_action, {"action": "setup"}, name="workspace_setup"),
    path("<int:pk>/workspace/scan/", views.domain_workspace_action, {"action": "scan"}, name="workspace_scan"),
    path("<int:pk>/workspace/sync/", views.domain_workspace_action, {"action": "sync"}, name="workspace_sync"),
    path("<int:pk>/workspace/suggest/", views.domain_workspace_action, {"action": "suggest"}, name="workspace_suggest"),
    # The task: its panel (the Task tab) and one POST per action (generate, verify, freeze,
    # unfreeze, import, config, tool), each answering with the refreshed panel.
    path("<int:pk>/task/", views.task_panel, name="task"),
    path("<int:pk>/task/<str:action>/", views.task_action, name="task_action"),
]
