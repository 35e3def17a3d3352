from rich.table import Table
from rich.text import Text

from dojo_site.cli import (
    ActionCommand,
    add_actions,
    add_domain_argument,
    add_json_argument,
    command_error,
    console_for,
    limit_checked,
    print_json,
)
from dojo_site.errors import NotFound
from domains.services import domain_resolve
from knowledge.models import KnowledgeAtom
from knowledge.services import atom_search

STATUSES = [*KnowledgeAtom.Status.values, "all"]


class Command(ActionCommand):
    help = "What the lab has learned: ls | search QUERY | show ID."

    def add_arguments(self, parser) -> None:
        add_domain_argument(parser)
        add_json_argument(parser)
        add = add_actions(parser)  # so `dojo_knowledge ls --domain X` works too
        ls = add("ls", "List the domain's atoms, most confident first.")
        ls.add_argument("--status", choices=STATUSES, default="active", help="Default: active.")
        ls.add_argument("--limit", type=int, default=50)
        search = add("search", "Rank atoms for a query (the domain's and global ones).")
        search.add_argument("query", metavar="QUERY")
        search.add_argument("--all-domains", action="store_true", help="Search every domain.")
        search.add_argument("--limit", type=int, default=10)
        show = add("show", "One atom with its evidence and version history.")
        show.add_argument("atom_id", metavar="ID", type=int)

    def _ls(self, options) -> None:
        domain = domain_resolve(name=options["domain"])
        atoms = domain.atoms.prefetch_related("evidence_links").order_by("-confidence", "-created_at", "-pk")
        if options["status"] != "all":
            atoms = atoms.filter(status=options["status"])
        self._print_atoms(options, list(atoms[: limit_checked(options["limit"])]), title=f"Knowledge of {domain.name}")

    def _search(self, options) -> None:
        domain = None
        if not options["all_domains"]:
            try:
                domain = domain_resolve(name=options["domain"])
            except NotFound as exc:
                if options["domain"]:
                    raise
                raise NotFound(f"{exc}; or search every domain with --all-domains") from None
        atoms = atom_search(query=options["query"], domain=domain, limit=options["limit"])
        where = "every domain" if domain is None else domain.name
        self._print_atoms(options, atoms, title=f"“{options['query']}” in {where}", scores=True)

    def _show(self, options) -> None:
        atom = (
            KnowledgeAtom.objects.select_related("domain").filter(pk=options["atom_id"]).first()
        )
        if atom is None:
            raise command_error(NotFound(f"no knowledge atom with id {options['atom_id']}"))
        versions = [*reversed(atom.newer_versions()), atom, *atom.older_versions()]
        if options["json"]:
            print_json(self, atom.summary() | {"versions": [v.summary() for v in versions]})
            return
        console = console_for(self)
        console.print(Text.assemble((f"#{atom.pk} ", "bold"), atom.claim))
        facts = Table(show_header=False, box=None)
        # User and agent text goes in as Text so "[...]" in a claim is not read as rich markup.
        facts.add_row("domain", Text(atom.domain.name if atom.domain else "global"))
        facts.add_row("context", Text(atom.context))
        if atom.action:
            facts.add_row("action", Text(atom.action))
        facts.add_row("status", f"{atom.status} (v{atom.version})")
        facts.add_row("confidence", f"{atom.confidence:.2f}")
        facts.add_row("contradictions", str(atom.contradictions))
        evidence = ", ".join(
            f"#{link.experiment_id} {link.stance}" for link in atom.evidence_links.order_by("experiment_id")
        )
        facts.add_row("evidence", evidence or "-")
        console.print(facts)
        history = Table("version", "id", "status", "confidence", "claim", title="Versions")
        for v in versions:
            history.add_row(f"v{v.version}", str(v.pk), v.status, f"{v.confidence:.2f}", Text(v.claim))
        console.print(history)

    def _print_atoms(self, options, atoms: list[KnowledgeAtom], *, title: str, scores: bool = False) -> None:
        if options["json"]:
            print_json(
                self,
                [a.summary() | ({"score": float(f"{a.score:.4g}")} if scores else {}) for a in atoms],
            )
            return
        if not atoms:
            self.stdout.write("No knowledge yet." if not scores else "Nothing matches.")
            return
        table = Table("id", "confidence", "status", "v", "claim", "evidence", title=title)
        if scores:
            table.add_column("match")
        for a in atoms:
            links = list(a.evidence_links.all())
            row = [
                str(a.pk), f"{a.confidence:.2f}", a.status, str(a.version), Text(a.claim),
                " ".join(f"#{link.experiment_id}{'✗' if link.stance == 'contradicts' else ''}" for link in links) or "-",
            ]
            if scores:
                row.append(f"{a.score:.3g}")
            table.add_row(*row)
        console_for(self).print(table)
