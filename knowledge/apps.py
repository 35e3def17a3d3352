from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def _fts_ensure(using: str = "default", **kwargs) -> None:
    from knowledge.fts import fts_ensure

    fts_ensure(connections[using])


class KnowledgeConfig(AppConfig):
    name = "knowledge"

    def ready(self) -> None:
        # A later migration that rebuilds the atoms table drops the index's triggers (knowledge/fts.py).
        post_migrate.connect(_fts_ensure, sender=self, dispatch_uid="knowledge_fts_ensure")
