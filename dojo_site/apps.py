from django.apps import AppConfig
from django.conf import settings


class DojoSiteConfig(AppConfig):
    name = "dojo_site"
    verbose_name = "Dojo"

    def ready(self) -> None:
        from dojo_site import checks  # noqa: F401  (registers the system checks)

        if settings.DOJO_Q_ROLE == "experiments":
            from django_q.conf import Conf

            # Experiment clusters keep their stats apart: the run reaper tells a dead run cluster
            # by the birth of the live ones (agentrun.services.runs_requeue_lost), and a
            # long-lived experiment cluster must not count as one of them.
            Conf.Q_STAT = f"django_q:{Conf.PREFIX}:experiments-cluster"
