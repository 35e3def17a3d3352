import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from domains.services import domain_use
from knowledge.services import atom_retract, atom_write
from tests.factories import DomainFactory
from tests.knowledge.helpers import make_experiment

pytestmark = pytest.mark.django_db

CONTEXT = "Regression on diabetes, RMSE on validation"


def run(*args) -> str:
    out = StringIO()
    call_command("dojo_knowledge", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def domain():
    return DomainFactory(name="diabetes")


@pytest.fixture
def atoms(domain):
    exp = make_experiment(domain)
    strong = atom_write(domain=domain, context=CONTEXT, claim="HistGradientBoosting beats [Ridge] by 31%",
                        confidence=0.9, evidence=[(exp.pk, "supports")]).atom
    weak = atom_write(domain=domain, context=CONTEXT, claim="Scaling helps k-NN", confidence=0.3).atom
    gone = atom_write(domain=domain, context=CONTEXT, claim="SVM is hopeless").atom
    atom_retract(atom=gone)
    other = atom_write(domain=DomainFactory(name="wine"), context="wine", claim="HistGradientBoosting overfits").atom
    return {"strong": strong, "weak": weak, "gone": gone, "other": other, "exp": exp}


def test_it_lists_the_domains_active_atoms(atoms):
    data = json.loads(run("--domain", "diabetes", "--json", "ls"))
    assert [a["id"] for a in data] == [atoms["strong"].pk, atoms["weak"].pk]
    assert data[0]["evidence"] == [{"experiment_id": atoms["exp"].pk, "stance": "supports"}]
    everything = json.loads(run("--domain", "diabetes", "--json", "ls", "--status", "all"))
    assert atoms["gone"].pk in [a["id"] for a in everything]

    table = run("--domain", "diabetes", "ls")
    assert "[Ridge]" in table  # claims are printed as text, not read as rich markup
    assert "SVM is hopeless" not in table


def test_it_uses_the_current_domain(atoms, domain):
    domain_use(domain=domain)
    assert "Scaling helps k-NN" in run("ls")


def test_it_searches_one_domain_or_all(atoms):
    scoped = json.loads(run("--domain", "diabetes", "--json", "search", "histgradientboosting"))
    assert [a["id"] for a in scoped] == [atoms["strong"].pk]
    assert scoped[0]["score"] > 0
    everywhere = json.loads(run("--json", "search", "histgradientboosting", "--all-domains"))
    assert {a["id"] for a in everywhere} == {atoms["strong"].pk, atoms["other"].pk}
    assert "Nothing matches" in run("--domain", "diabetes", "search", "zebra")


def test_it_shows_an_atom_with_its_versions(domain):
    v1 = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge by 10%").atom
    v2 = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge by 12%").atom
    data = json.loads(run("--json", "show", str(v1.pk)))
    assert data["status"] == "superseded"
    assert [v["id"] for v in data["versions"]] == [v2.pk, v1.pk]
    text = run("show", str(v2.pk))
    assert "Extra trees beats Ridge by 12%" in text and "v1" in text and "v2" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--domain", "nope", "ls"), "no domain named 'nope'"),
        (("ls",), "no current domain"),
        (("search", "trees"), "no current domain.*--all-domains"),
        (("show", "99999"), "no knowledge atom with id 99999"),
        (("--domain", "diabetes", "search", "   "), "Query must not be empty"),
        (("--domain", "diabetes", "search", "x", "--limit", "0"), "Limit must be"),
        (("--domain", "diabetes", "ls", "--limit", "0"), "--limit must be at least 1"),
        (("ls", "--domain", "nope"), "no domain named 'nope'"),  # --domain after the action, like every dojo_* command
    ],
)
def test_it_fails_with_one_clear_line(domain, args, message):
    with pytest.raises(CommandError, match=message) as info:
        run(*args)
    assert "\n" not in str(info.value)
    assert info.value.returncode == 1


def test_it_takes_a_limit_larger_than_any_database_limit(domain):
    # It was an OverflowError traceback from SQLite; a huge limit now means "all".
    atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge")
    listed = json.loads(run("ls", "--domain", "diabetes", "--json", "--limit", str(10**20)))
    assert [a["claim"] for a in listed] == ["Extra trees beats Ridge"]
