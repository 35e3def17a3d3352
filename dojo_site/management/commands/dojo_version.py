from django.core.management.base import BaseCommand

from dojo_site.cli import add_json_argument, print_json
from dojo_site.config import config_public


class Command(BaseCommand):
    help = "Print Dojo's version (with Python's and Django's)."

    def add_arguments(self, parser) -> None:
        add_json_argument(parser)

    def get_version(self) -> str:
        config = config_public()
        return f"Dojo {config['version']} (Python {config['python']}, Django {config['django']})"

    def handle(self, *args, **options) -> None:
        config = config_public()
        if options["json"]:
            print_json(self, {k: config[k] for k in ("version", "python", "django")})
        else:
            self.stdout.write(self.get_version())
