from django.core.management.base import BaseCommand

from dojo_site.cli import (
    add_actions,
    add_domain_argument,
    add_json_argument,
    command_error,
    print_json,
)
from dojo_site.errors import DojoError
from domains.services import domain_file_read, domain_resolve


class Command(BaseCommand):
    help = "Print the domain's PROGRAM.md (the text that steers the agent): show."

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        action = add_actions(parser)
        action("show", help="Print PROGRAM.md.")

    def handle(self, *args, **options) -> None:
        try:
            domain = domain_resolve(name=options["domain"])
            text = domain_file_read(domain=domain, which="program")
        except DojoError as exc:
            raise command_error(exc) from None
        if options["json"]:
            print_json(self, {"domain": domain.name, "path": domain.program_path, "text": text})
        elif text:
            self.stdout.write(text, ending="" if text.endswith("\n") else "\n")
        else:
            self.stderr.write(f"{domain.program_path} is missing or empty.")
