import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand

from dojo_site.cli import (
    add_actions,
    add_domain_argument,
    add_json_argument,
    command_error,
    print_json,
)
from dojo_site.errors import DojoError, InvalidInput
from domains.services import domain_file_read, domain_file_write, domain_resolve


class Command(BaseCommand):
    help = "The domain's PROGRAM.md (the text that steers the agent): show | edit."

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        action = add_actions(parser)
        action("show", help="Print PROGRAM.md.")
        edit = action("edit", help="Edit PROGRAM.md in $EDITOR (or $VISUAL), or replace it with --set-file.")
        edit.add_argument("--set-file", dest="set_file", type=Path, metavar="FILE",
                          help="Replace PROGRAM.md with this file's text (no editor).")

    def handle(self, *args, **options) -> None:
        try:
            domain = domain_resolve(name=options["domain"])
            if options["action"] == "edit":
                self._edit(domain, options)
                return
            text = domain_file_read(domain=domain, which="program")
        except DojoError as exc:
            raise command_error(exc) from None
        if options["json"]:
            print_json(self, {"domain": domain.name, "path": domain.program_path, "text": text})
        elif text:
            self.stdout.write(text, ending="" if text.endswith("\n") else "\n")
        else:
            self.stderr.write(f"{domain.program_path} is missing or empty.")

    def _edit(self, domain, options) -> None:
        before = domain_file_read(domain=domain, which="program")
        if options["set_file"] is not None:
            try:
                text = options["set_file"].read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"cannot read {options['set_file']}: {exc}") from None
        else:
            text = self._in_editor(before)
        changed = text.replace("\r\n", "\n").rstrip("\n") != before.rstrip("\n")
        if changed:
            domain_file_write(domain=domain, which="program", text=text)
        if options["json"]:
            print_json(self, {"domain": domain.name, "path": domain.program_path, "changed": changed})
        else:
            self.stdout.write(f"{domain.program_path}: {'saved' if changed else 'unchanged'}.")

    def _in_editor(self, text: str) -> str:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
        if not editor:
            raise InvalidInput("set $EDITOR (e.g. EDITOR=nano), or give --set-file FILE")
        with tempfile.TemporaryDirectory(prefix="dojo-program-") as folder:
            path = Path(folder) / "PROGRAM.md"
            path.write_text(text, encoding="utf-8")
            try:
                done = subprocess.run([*shlex.split(editor), str(path)], check=False)
            except OSError as exc:
                raise InvalidInput(f"cannot start the editor {editor!r}: {exc.strerror}") from None
            if done.returncode != 0:
                raise InvalidInput(f"the editor {editor!r} exited with status {done.returncode}; PROGRAM.md is unchanged")
            return path.read_text(encoding="utf-8")
