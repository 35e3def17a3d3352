from django.apps import AppConfig


class DojoSiteConfig(AppConfig):
    name = "dojo_site"
    verbose_name = "Dojo"

    def ready(self) -> None:
        from dojo_site import checks  # noqa: F401  (registers the system checks)
