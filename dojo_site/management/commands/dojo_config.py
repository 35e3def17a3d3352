from django.core.management.base import BaseCommand
from rich.table import Table

from dojo_site.cli import add_actions, add_json_argument, console_for, print_json
from dojo_site.config import config_public


class Command(BaseCommand):
    help = "Dojo's settings that are safe to show (never keys or tokens): show."

    def add_arguments(self, parser) -> None:
        add_json_argument(parser)
        action = add_actions(parser, domain=False)
        action("show", help="Print the version and the non-secret settings.")

    def handle(self, *args, **options) -> None:
        config = config_public()
        if options["json"]:
            print_json(self, config)
            return
        table = Table("setting", "value")
        for name, value in config.items():
            table.add_row(name, str(value))
        console_for(self).print(table)
