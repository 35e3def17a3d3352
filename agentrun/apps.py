from django.apps import AppConfig


class AgentrunConfig(AppConfig):
    name = "agentrun"
