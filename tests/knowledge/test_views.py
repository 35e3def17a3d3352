import pytest
from django.urls import reverse

from knowledge.models import KnowledgeAtom
from knowledge.services import atom_retract, atom_write
from tests.factories import DomainFactory
from tests.knowledge.helpers import make_experiment

pytestmark = pytest.mark.django_db

CONTEXT = "Regression on diabetes, RMSE on validation"


@pytest.fixture
def domain():
    return DomainFactory(name="diabetes")


@pytest.fixture
def history(domain):
    """v1 → v2 of one finding, a retracted atom, and an active one with contradicting evidence."""
    e1, e2, e3 = (make_experiment(domain, hypothesis=f"try {i}") for i in range(3))
    v1 = atom_write(domain=domain, context=CONTEXT, claim="HistGradientBoosting beats Ridge by 31%",
                    evidence=[(e1.pk, "supports")]).atom
    v2 = atom_write(domain=domain, context=CONTEXT, claim="HistGradientBoosting beats Ridge by 25%",
                    evidence=[(e2.pk, "supports")]).atom
    wrong = atom_write(domain=domain, context=CONTEXT, claim="Lasso needs no scaling at all").atom
    atom_retract(atom=wrong)
    knn = atom_write(domain=domain, context=CONTEXT, claim="Scaling features helps k-NN",
                     evidence=[(e3.pk, "contradicts")]).atom
    return {"v1": v1, "v2": v2, "wrong": wrong, "knn": knn, "experiments": (e1, e2, e3)}


@pytest.mark.parametrize(
    "url",
    [lambda d, a: reverse("knowledge:search"),
     lambda d, a: reverse("knowledge:domain_list", args=[d.pk]),
     lambda d, a: reverse("knowledge:detail", args=[a.pk])],
)
def test_it_requires_login_on_every_page(client, domain, url):
    atom = atom_write(domain=domain, context=CONTEXT, claim="HGB beats Ridge").atom
    response = client.get(url(domain, atom))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_shows_a_domains_knowledge_active_first_with_evidence_links(client_logged_in, domain, history):
    response = client_logged_in.get(reverse("knowledge:domain_list", args=[domain.pk]))
    assert response.status_code == 200
    assert "knowledge/domain_list.html" in [t.name for t in response.templates]
    assert response.context["atoms"] == [history["v2"], history["knn"]]
    assert response.context["counts"] == {"active": 2, "history": 2}
    html = response.content.decode()
    assert "<html" in html
    assert "beats Ridge by 25%" in html and "beats Ridge by 31%" not in html
    e1, e2, e3 = history["experiments"]
    assert f'href="{e2.get_absolute_url()}"' in html
    assert f'href="{e3.get_absolute_url()}"' in html
    assert "v2" in html and f'href="{history["v2"].get_absolute_url()}"' in html
    # Earlier versions and retracted atoms are one click away.
    earlier = client_logged_in.get(reverse("knowledge:domain_list", args=[domain.pk]), {"show": "history"})
    assert set(earlier.context["atoms"]) == {history["v1"], history["wrong"]}
    assert "beats Ridge by 31%" in earlier.content.decode()


def test_it_pages_a_large_domain_knowledge_tab_with_few_queries(client_logged_in, domain, django_assert_max_num_queries):
    experiments = [make_experiment(domain, hypothesis=f"e{i}") for i in range(3)]
    atoms = KnowledgeAtom.objects.bulk_create(
        KnowledgeAtom(domain=domain, context=CONTEXT, claim=f"finding number {i}", confidence=0.5) for i in range(60)
    )
    from knowledge.models import Evidence

    Evidence.objects.bulk_create(Evidence(atom=a, experiment=e) for a in atoms for e in experiments)
    url = reverse("knowledge:domain_list", args=[domain.pk])
    # Session + user, the domain, the counts, one page of atoms, their evidence: not one per atom.
    with django_assert_max_num_queries(7):
        first = client_logged_in.get(url, headers={"HX-Request": "true"})
    assert len(first.context["atoms"]) == 25 and first.context["page"].paginator.num_pages == 3
    assert "page 1 of 3" in first.content.decode()
    last = client_logged_in.get(url, {"page": 3}, headers={"HX-Request": "true"})
    assert len(last.context["atoms"]) == 10
    shown = {a.pk for page in (1, 2, 3) for a in client_logged_in.get(url, {"page": page}).context["atoms"]}
    assert shown == {a.pk for a in atoms}


def test_it_renders_the_domain_tab_fragment_for_htmx(client_logged_in, domain, history):
    response = client_logged_in.get(
        reverse("knowledge:domain_list", args=[domain.pk]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert html.lstrip().startswith('<div id="domain-knowledge">')
    assert "beats Ridge by 25%" in html


def test_it_shows_an_empty_domain_and_404s_an_unknown_one(client_logged_in, domain):
    response = client_logged_in.get(reverse("knowledge:domain_list", args=[domain.pk]))
    assert "No knowledge yet" in response.content.decode()
    assert client_logged_in.get(reverse("knowledge:domain_list", args=[99999])).status_code == 404


def test_it_shows_an_atom_with_its_version_history_and_evidence(client_logged_in, history):
    v1, v2 = history["v1"], history["v2"]
    e1, e2, _ = history["experiments"]
    response = client_logged_in.get(v2.get_absolute_url())
    assert response.status_code == 200
    assert response.context["versions"] == [v2, v1]
    html = response.content.decode()
    assert f'href="{e1.get_absolute_url()}"' in html and f'href="{e2.get_absolute_url()}"' in html
    assert f'href="{v1.get_absolute_url()}"' in html

    old = client_logged_in.get(v1.get_absolute_url())
    assert old.context["versions"] == [v2, v1]
    assert old.context["latest"] == v2
    assert "A newer version exists" in old.content.decode()
    assert client_logged_in.get(reverse("knowledge:detail", args=[99999])).status_code == 404


def test_it_shows_the_contradicted_atom_as_related(client_logged_in, domain):
    old = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats Ridge").atom
    new = atom_write(domain=domain, context=CONTEXT, claim="Ridge beats Extra trees").atom
    html = client_logged_in.get(new.get_absolute_url()).content.decode()
    assert f'href="{old.get_absolute_url()}"' in html
    assert "contradicted 1×" in html


def test_it_searches_across_domains(client_logged_in, domain, history):
    other = DomainFactory(name="wine")
    theirs = atom_write(domain=other, context="Multiclass wine", claim="HistGradientBoosting overfits wine").atom

    response = client_logged_in.get(reverse("knowledge:search"), {"q": "histgradientboosting"})
    assert response.status_code == 200
    atoms = response.context["atoms"]
    assert {history["v2"], theirs} <= set(atoms)
    assert atoms.index(history["v2"]) < atoms.index(history["v1"])  # active first
    assert history["knn"] not in atoms
    html = response.content.decode()
    assert "wine" in html and "diabetes" in html

    only_wine = client_logged_in.get(reverse("knowledge:search"), {"q": "histgradientboosting", "domain": other.pk})
    assert only_wine.context["atoms"] == [theirs]
    active = client_logged_in.get(reverse("knowledge:search"), {"q": "histgradientboosting", "status": "active"})
    assert all(a.status == KnowledgeAtom.Status.ACTIVE for a in active.context["atoms"])


def test_it_lists_recent_knowledge_without_a_query_and_answers_htmx_with_results(client_logged_in, history):
    response = client_logged_in.get(reverse("knowledge:search"))
    assert response.status_code == 200
    assert response.context["atoms"][0] == history["knn"]
    assert history["wrong"] not in response.context["atoms"]

    fragment = client_logged_in.get(reverse("knowledge:search"), {"q": "scaling knn"}, headers={"HX-Request": "true"})
    html = fragment.content.decode()
    assert html.lstrip().startswith('<div id="knowledge-results">')
    assert "Scaling features helps k-NN" in html


def test_it_shows_a_form_error_for_a_bad_search(client_logged_in):
    response = client_logged_in.get(reverse("knowledge:search"), {"q": "x", "domain": "not-a-domain"})
    assert response.status_code == 200
    assert response.context["form"].errors["domain"]
    assert client_logged_in.get(reverse("knowledge:search"), {"q": "x" * 600}).status_code == 200


def test_it_shows_which_claim_each_experiment_supports_after_a_merge(client_logged_in, domain):
    from knowledge.services import atoms_merge

    e1, e2 = make_experiment(domain, hypothesis="forest"), make_experiment(domain, hypothesis="trees")
    a = atom_write(domain=domain, context="trees", claim="Random forest is strong", evidence=[(e1.pk, "supports")]).atom
    b = atom_write(domain=domain, context="ensembles", claim="Extra trees do well", confidence=0.8,
                   evidence=[(e2.pk, "supports")]).atom
    merged = atoms_merge(atoms=[a, b])
    html = client_logged_in.get(reverse("knowledge:detail", args=[merged.pk])).content.decode()
    table = html[html.index('id="atom-evidence"'):]
    assert "For the claim" in table
    # Each row names its own claim, next to its experiment.
    row_e1 = table[table.index(f">#{e1.pk}<"):]
    assert row_e1.index("Random forest is strong") < row_e1.index("</tr>")
    row_e2 = table[table.index(f">#{e2.pk}<"):]
    assert row_e2.index("Extra trees do well") < row_e2.index("</tr>")
