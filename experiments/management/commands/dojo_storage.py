from datetime import timedelta

from rich.table import Table

from dojo_site.cli import (
    ActionCommand,
    add_actions,
    add_json_argument,
    console_for,
    print_json,
)
from domains.services import tasks_snapshot_publish_missing
from experiments.services import STORAGE_GC_MIN_AGE, storage_gc


class Command(ActionCommand):
    help = ("The shared storage (STORAGES['dojo']): publish (the snapshots of tasks frozen on this machine "
            "before snapshots were published) | gc (remove the objects no row records any more).")

    def add_arguments(self, parser) -> None:
        add_json_argument(parser)
        add = add_actions(parser, domain=False)
        add("publish", "Publish the snapshot of every frozen task that has none in the shared storage and whose "
                       "folder is on this machine (each checked against the task's fingerprints first). "
                       "Every worker start does the same.")
        gc = add("gc", "Remove the artifacts no experiment records and the snapshot archives and workspace bundles "
                       "no task records, once older than the grace period.")
        gc.add_argument("--dry-run", action="store_true", help="Count what would be removed; remove nothing.")
        gc.add_argument("--min-age-hours", type=float, default=STORAGE_GC_MIN_AGE.total_seconds() / 3600,
                        metavar="N", help="Grace period: keep anything written less than N hours ago, so a write "
                                          "whose row is not committed yet is never removed (default 24, at least 1).")

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

    def _gc(self, options) -> None:
        counts = storage_gc(min_age=timedelta(hours=options["min_age_hours"]), dry_run=options["dry_run"])
        if options["json"]:
            print_json(self, counts)
            return
        verb = "would remove" if options["dry_run"] else "removed"
        table = Table("objects", "recorded (kept)", "younger (kept)", verb, "bytes", "failed",
                      title=f"Shared storage gc (grace period {options['min_age_hours']:g} h)")
        for kind, row in counts.items():
            table.add_row(kind, str(row["kept_referenced"]), str(row["kept_young"]), str(row["removed"]),
                          f"{row['bytes_removed']:,}", str(row["failed"]))
        console = console_for(self)
        console.print(table)
        removed = sum(row["removed"] for row in counts.values())
        freed = sum(row["bytes_removed"] for row in counts.values())
        console.print(f"{'Dry run: ' if options['dry_run'] else ''}{verb} {removed} objects ({freed:,} bytes)")
