from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rich.table import Table

from dojo_site.cli import add_actions, add_json_argument, console_for, print_json
from domains.models import ApiToken
from domains.services import token_create, token_revoke


class Command(BaseCommand):
    help = "API tokens: create --user U [--name N] (prints the token once) | ls | revoke ID."

    def add_arguments(self, parser) -> None:
        add_json_argument(parser)
        action = add_actions(parser, domain=False)
        create = action("create", help="Create a token; the plain token is printed only now.")
        create.add_argument("--user", required=True, help="Username the token acts as.")
        create.add_argument("--name", default="", help="What the token is for.")
        action("ls", help="List tokens (prefixes only).")
        revoke = action("revoke", help="Revoke a token by id.")
        revoke.add_argument("token_id", type=int)

    def handle(self, *args, **options) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _create(self, options) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user named {options['user']!r}; create one with `manage.py createsuperuser`")
        token, plain = token_create(user=user, name=options["name"])
        if options["json"]:
            print_json(self, {"id": token.pk, "user": user.username, "name": token.name, "token": plain})
            return
        self.stdout.write(plain)
        self.stderr.write("Keep it now: only its hash is stored. Send it as `Authorization: Bearer <token>`.")

    def _ls(self, options) -> None:
        tokens = list(ApiToken.objects.select_related("user"))
        rows = [
            {"id": t.pk, "user": t.user.username, "name": t.name, "prefix": t.prefix,
             "created_at": t.created_at, "last_used_at": t.last_used_at, "revoked_at": t.revoked_at}
            for t in tokens
        ]
        if options["json"]:
            print_json(self, rows)
            return
        table = Table("id", "user", "name", "prefix", "created", "last used", "revoked")
        for r in rows:
            table.add_row(*(str(r[k] or "-") for k in ("id", "user", "name", "prefix", "created_at", "last_used_at", "revoked_at")))
        console_for(self).print(table)

    def _revoke(self, options) -> None:
        token = ApiToken.objects.filter(pk=options["token_id"]).first()
        if token is None:
            raise CommandError(f"no token with id {options['token_id']}")
        token_revoke(token=token)
        self.stdout.write(f"Revoked token {token.pk} ({token.prefix}…).")
