from django.apps import AppConfig
from django.conf import settings


class DojoSiteConfig(AppConfig):
    name = "dojo_site"
    verbose_name = "Dojo"

    def ready(self) -> None:
        from dojo_site import checks  # noqa: F401  (registers the system checks)

        if settings.DOJO_Q_ROLE == "experiments":
            from django_q.conf import Conf

            from dojo_site.queues import stats_key

            # Experiment clusters keep their stats apart: each queue's lost-entry reaper judges it by
            # the clusters serving it (dojo_site.queues), and a busy experiment cluster must not pass
            # for a run cluster that may hold a lost run, nor the other way round.
            Conf.Q_STAT = stats_key(settings.DOJO_EXPERIMENT_QUEUE)
