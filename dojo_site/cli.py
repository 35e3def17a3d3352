"""Small helpers shared by the dojo_* management commands."""

import argparse
import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from rich.console import Console

from dojo_site.errors import DojoError, InvalidInput, NotReady
from dojo_site.schemas import DB_ID_MAX

# Exit code for "the thing exists but is not ready" (e.g. the task is not frozen).
EXIT_NOT_READY = 3


def console_for(command: BaseCommand) -> Console:
    """A rich console writing to the command's stdout (so call_command(stdout=…) captures it)."""
    out = getattr(command.stdout, "_out", command.stdout)
    return Console(file=out, width=120 if not out.isatty() else None, highlight=False, soft_wrap=True)


def dojo_version_option(parser: ArgumentParser) -> None:
    """Make the command's `--version` print Dojo's version instead of Django's alone. Django adds
    that option before add_arguments runs; the shared helpers below call this, so every dojo_*
    command using them gets it."""
    from django import get_version

    from dojo_site.config import dojo_version

    for action in parser._actions:  # argparse keeps its options here; there is no public accessor
        if isinstance(action, argparse._VersionAction):
            action.version = f"Dojo {dojo_version()} (Django {get_version()})"


def add_domain_argument(parser: ArgumentParser, *, subcommand: bool = False) -> None:
    """--domain NAME. With subcommand=True, for a sub-parser, so `cmd ls --domain X` works as
    well as `cmd --domain X ls` (SUPPRESS: an absent option does not reset the parent's value)."""
    if not subcommand:
        dojo_version_option(parser)
    parser.add_argument(
        "--domain",
        default=argparse.SUPPRESS if subcommand else None,
        help="Domain name (or id); defaults to the current domain.",
    )


def add_json_argument(parser: ArgumentParser, *, subcommand: bool = False) -> None:
    if not subcommand:
        dojo_version_option(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="Print machine-readable JSON.",
    )


def limit_checked(limit: int) -> int:
    """Return --limit capped at what a database LIMIT takes (a huge one means "all"); InvalidInput below 1."""
    if limit < 1:
        raise InvalidInput("--limit must be at least 1")
    return min(limit, DB_ID_MAX)


def command_error(exc: DojoError) -> CommandError:
    """One line for the user; "not ready" exits 3, everything else 1."""
    return CommandError(str(exc), returncode=EXIT_NOT_READY if isinstance(exc, NotReady) else 1)


def print_json(command: BaseCommand, data: Any) -> None:
    command.stdout.write(json.dumps(data, indent=2, default=str))


def add_actions(parser: ArgumentParser, *, domain: bool = True):
    """Sub-commands (`ls`, `show NAME`…); each also takes --json (and --domain) after its name.

    Returns `add(name, help) -> sub-parser`; the chosen one is in options["action"].
    """
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, help: str) -> ArgumentParser:
        sub = actions.add_parser(name, help=help)
        add_json_argument(sub, subcommand=True)
        if domain:
            add_domain_argument(sub, subcommand=True)
        return sub

    return add


class ActionCommand(BaseCommand):
    """A command with sub-commands (add_actions), each a method `_<action>(self, options)`; a
    DojoError it raises becomes command_error's one line and exit code."""

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except DojoError as exc:
            raise command_error(exc) from None
