from django.core.management.base import BaseCommand
from rich.table import Table

from dojo_site.cli import add_actions, add_json_argument, console_for, print_json
from domains.services import tasks_snapshot_publish_missing


class Command(BaseCommand):
    help = ("The shared storage (STORAGES['dojo']): publish (the snapshots of tasks frozen on this machine "
            "before snapshots were published).")

    def add_arguments(self, parser) -> None:
        add_json_argument(parser)
        add = add_actions(parser, domain=False)
        add("publish", "Publish the snapshot of every frozen task that has none in the shared storage and whose "
                       "folder is on this machine (each checked against the task's fingerprints first). "
                       "Every worker start does the same.")

    def handle(self, *args, **options) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _publish(self, options) -> None:
        done = tasks_snapshot_publish_missing()
        if options["json"]:
            print_json(self, done)
            return
        if not done:
            self.stdout.write("Nothing to publish: every frozen task whose snapshot is on this machine has its archive.")
            return
        table = Table("domain", "archive or problem", title="Snapshots published")
        for row in done:
            table.add_row(row["domain"], row["archive"]["name"] if "archive" in row else f"not published: {row['problem']}")
        console_for(self).print(table)
