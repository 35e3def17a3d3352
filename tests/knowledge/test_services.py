import re

import pytest

from dojo_site.errors import Conflict, InvalidInput
from knowledge.models import Evidence, KnowledgeAtom
from knowledge.services import (
    atom_list_for_context,
    atom_restore,
    atom_retract,
    atom_search,
    atom_search_page,
    atom_set_confidence,
    atom_write,
    atoms_merge,
)
from tests.factories import DomainFactory
from tests.knowledge.helpers import RUN_FINDINGS, make_experiment

pytestmark = pytest.mark.django_db

CONTEXT = "Regression on the diabetes data, RMSE on validation"
HGB_BEATS_RIDGE = "HistGradientBoosting beats Ridge by 31% RMSE (experiments {} vs {})"


def stances(atom):
    return dict(atom.evidence_links.values_list("experiment_id", "stance"))


@pytest.fixture
def domain():
    return DomainFactory()


def test_it_creates_an_atom_when_nothing_is_similar(domain):
    exp = make_experiment(domain)
    result = atom_write(
        domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(12, 3),
        action="Start from HistGradientBoosting", confidence=0.7, evidence=[(exp.pk, "supports")],
    )
    assert result.outcome == "created"
    atom = KnowledgeAtom.objects.get()
    assert atom == result.atom
    assert (atom.domain, atom.version, atom.status, atom.confidence) == (domain, 1, "active", 0.7)
    assert stances(atom) == {exp.pk: "supports"}

    other = atom_write(domain=domain, context=CONTEXT, claim="A log target transform helps Ridge on skewed targets")
    assert other.outcome == "created"
    assert KnowledgeAtom.objects.filter(status="active").count() == 2


def test_it_versions_an_agreeing_near_duplicate(domain, user):
    e1, e2, e3 = (make_experiment(domain) for _ in range(3))
    first = atom_write(
        domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(e1.pk, e2.pk),
        confidence=0.6, evidence=[(e1.pk, "supports"), (e2.pk, "supports")],
    ).atom

    result = atom_write(
        domain=domain, context=CONTEXT, claim="HistGradientBoosting beats Ridge by 27% RMSE (experiments 30 vs 31)",
        confidence=0.6, evidence=[(e3.pk, "supports")], user=user,
    )

    assert result.outcome == "versioned"
    assert result.matched == first
    new = result.atom
    first.refresh_from_db()
    assert first.status == "superseded"
    assert (new.status, new.version, new.supersedes) == ("active", 2, first)
    assert new.confidence > first.confidence == 0.6
    assert new.claim.startswith("HistGradientBoosting beats Ridge by 27%")
    assert stances(new) == {e1.pk: "supports", e2.pk: "supports", e3.pk: "supports"}
    assert stances(first) == {e1.pk: "supports", e2.pk: "supports"}  # history untouched
    assert new.created_by_user == user
    assert new.older_versions() == [first]
    assert first.newer_versions() == [new]


def test_it_keeps_raising_confidence_over_a_chain_of_versions(domain):
    confidences = []
    for i in range(4):
        atom = atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(i, i + 1)).atom
        confidences.append(atom.confidence)
    assert confidences == sorted(confidences) and len(set(confidences)) == 4
    assert confidences[-1] < 1
    assert atom.version == 4
    assert [a.version for a in atom.older_versions()] == [3, 2, 1]
    assert KnowledgeAtom.objects.filter(status="active").get() == atom


def test_it_records_an_opposite_claim_as_a_contradiction(domain):
    e1, e2 = make_experiment(domain), make_experiment(domain)
    old = atom_write(
        domain=domain, context=CONTEXT, claim="HistGradientBoosting beats Ridge on RMSE",
        confidence=0.8, evidence=[(e1.pk, "supports")],
    ).atom

    result = atom_write(
        domain=domain, context=CONTEXT, claim="Ridge beats HistGradientBoosting on RMSE",
        confidence=0.6, evidence=[(e2.pk, "supports")],
    )

    assert result.outcome == "contradicted"
    assert result.matched == old
    new = result.atom
    old.refresh_from_db()
    assert new != old
    assert old.status == new.status == "active"
    assert old.confidence < 0.8
    assert new.confidence < 0.6
    assert old.contradictions == new.contradictions == 1
    assert list(new.related.all()) == [old]
    assert list(old.related.all()) == [new]
    # The experiment behind the opposite claim is recorded against the old one.
    assert stances(old) == {e1.pk: "supports", e2.pk: "contradicts"}
    assert stances(new) == {e2.pk: "supports"}


def test_it_records_a_negated_claim_as_a_contradiction(domain):
    old = atom_write(domain=domain, context=CONTEXT, claim="Scaling the features helps k-NN", confidence=0.7).atom
    result = atom_write(domain=domain, context=CONTEXT, claim="Scaling the features does not help k-NN")
    assert result.outcome == "contradicted"
    old.refresh_from_db()
    assert old.confidence == pytest.approx(0.7 * (1 - 0.5 / 2))


def test_it_records_contradicting_evidence_on_the_same_claim(domain):
    e1, e2 = make_experiment(domain), make_experiment(domain)
    old = atom_write(
        domain=domain, context=CONTEXT, claim="Interactions help Ridge", confidence=0.8,
        evidence=[(e1.pk, "supports")],
    ).atom

    result = atom_write(
        domain=domain, context=CONTEXT, claim="Interactions help Ridge", confidence=0.5,
        evidence=[(e2.pk, "contradicts")],
    )

    assert result.outcome == "contradicted"
    assert result.atom == old
    old.refresh_from_db()
    assert (old.status, old.version, old.contradictions) == ("active", 1, 1)
    assert old.confidence < 0.8
    assert stances(old) == {e1.pk: "supports", e2.pk: "contradicts"}
    assert KnowledgeAtom.objects.count() == 1


def test_it_prefers_the_agreeing_atom_when_both_sides_are_known(domain):
    a_beats_b = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats k-NN").atom
    b_beats_a = atom_write(domain=domain, context=CONTEXT, claim="k-NN beats Extra trees").atom
    result = atom_write(domain=domain, context=CONTEXT, claim="Extra trees beats k-NN")
    assert result.outcome == "versioned"
    assert result.matched == a_beats_b
    b_beats_a.refresh_from_db()
    assert b_beats_a.status == "active"


def test_it_uses_the_configured_similarity_threshold(settings):
    claim_a = "Random forest beats Ridge on RMSE"
    claim_b = "Extra trees beats Ridge on RMSE"
    strict, loose = DomainFactory(), DomainFactory()

    settings.DOJO_KNOWLEDGE_SIMILARITY = 0.95
    atom_write(domain=strict, context=CONTEXT, claim=claim_a)
    assert atom_write(domain=strict, context=CONTEXT, claim=claim_b).outcome == "created"

    settings.DOJO_KNOWLEDGE_SIMILARITY = 0.3
    first = atom_write(domain=loose, context=CONTEXT, claim=claim_a).atom
    result = atom_write(domain=loose, context=CONTEXT, claim=claim_b)
    assert (result.outcome, result.matched) == ("versioned", first)
    assert 0.3 <= result.similarity < 0.95


def test_it_never_links_across_domains(domain):
    other = DomainFactory()
    theirs = atom_write(domain=other, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2)).atom
    glob = atom_write(domain=None, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2)).atom

    mine = atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2))
    assert mine.outcome == "created"
    assert atom_write(domain=None, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(3, 4)).matched == glob
    theirs.refresh_from_db()
    assert (theirs.status, theirs.version) == ("active", 1)


def test_it_only_links_with_active_atoms(domain):
    old = atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2)).atom
    atom_retract(atom=old)
    assert atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2)).outcome == "created"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"claim": "  "}, "Claim must not be empty"),
        ({"context": ""}, "Context must not be empty"),
        ({"confidence": 1.5}, "between 0 and 1"),
        ({"confidence": float("nan")}, "between 0 and 1"),
        ({"confidence": True}, "must be a number"),
        ({"evidence": [(1, "maybe")]}, "stance"),
        ({"evidence": [99999]}, "Evidence items"),
        ({"evidence": [(99999, "supports")]}, "Unknown experiment(s): 99999"),
    ],
)
def test_it_rejects_bad_input_and_writes_nothing(domain, kwargs, message):
    args = {"domain": domain, "context": CONTEXT, "claim": "HGB beats Ridge", **kwargs}
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        atom_write(**args)
    assert not KnowledgeAtom.objects.exists()


def test_it_rejects_evidence_from_another_domain(domain):
    foreign = make_experiment(DomainFactory())
    with pytest.raises(InvalidInput, match="another domain"):
        atom_write(domain=domain, context=CONTEXT, claim="HGB beats Ridge", evidence=[(foreign.pk, "supports")])
    assert not KnowledgeAtom.objects.exists()


def test_it_rolls_back_the_whole_write_when_a_step_fails(domain, monkeypatch):
    old = atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2), confidence=0.6).atom
    exp = make_experiment(domain)

    def broken(atom, stances, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("knowledge.services._add_evidence", broken)
    with pytest.raises(RuntimeError):
        atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2), evidence=[(exp.pk, "supports")])
    old.refresh_from_db()
    assert (old.status, old.confidence) == ("active", 0.6)
    assert KnowledgeAtom.objects.count() == 1


def test_it_ranks_search_results_active_first_then_by_relevance(domain):
    hgb = atom_write(domain=domain, context=CONTEXT, claim="HistGradientBoosting beats Ridge").atom
    knn = atom_write(domain=domain, context=CONTEXT, claim="Scaling features helps k-NN").atom
    retracted = atom_write(domain=domain, context=CONTEXT, claim="HistGradientBoosting needs no scaling").atom
    atom_retract(atom=retracted)

    results = atom_search(query="histgradientboosting", domain=domain)
    assert results == [hgb, retracted]
    assert results[0].score > 0
    assert knn not in results
    assert atom_search(query="scaling knn", domain=domain)[0] == knn


def test_it_searches_one_domain_plus_global_atoms_or_everything(domain):
    other = DomainFactory()
    mine = atom_write(domain=domain, context="tabular", claim="Extra trees beats Ridge").atom
    theirs = atom_write(domain=other, context="tabular", claim="Extra trees beats Lasso").atom
    glob = atom_write(domain=None, context="tabular", claim="Extra trees are fast to train").atom

    assert set(atom_search(query="extra trees", domain=domain)) == {mine, glob}
    assert set(atom_search(query="extra trees")) == {mine, theirs, glob}
    assert atom_search(query="extra trees", limit=1) and len(atom_search(query="extra trees", limit=1)) == 1


@pytest.mark.parametrize(("query", "limit"), [("", 10), ("   ", 10), ("trees", 0), ("trees", 1000)])
def test_it_rejects_bad_search_input(query, limit):
    with pytest.raises(InvalidInput):
        atom_search(query=query, limit=limit)


def test_it_lists_active_atoms_for_an_agent_most_confident_first(domain):
    low = atom_write(domain=domain, context="a", claim="Lasso underfits here", confidence=0.3).atom
    high = atom_write(domain=domain, context="b", claim="HistGradientBoosting wins", confidence=0.9).atom
    tie_old = atom_write(domain=domain, context="c", claim="Target transform helps", confidence=0.5).atom
    tie_new = atom_write(domain=domain, context="d", claim="SVM is too slow above 5k rows", confidence=0.5).atom
    gone = atom_write(domain=domain, context="e", claim="Bagging k-NN is pointless", confidence=0.95).atom
    atom_retract(atom=gone)
    atom_write(domain=DomainFactory(), context="f", claim="Other domain knowledge", confidence=1.0)

    assert atom_list_for_context(domain=domain, limit=10) == [high, tie_new, tie_old, low]
    assert atom_list_for_context(domain=domain, limit=2) == [high, tie_new]


def test_it_retracts_and_restores_an_atom(domain):
    atom = atom_write(domain=domain, context=CONTEXT, claim="HGB beats Ridge").atom
    assert atom_retract(atom=atom).status == "retracted"
    with pytest.raises(Conflict):
        atom_retract(atom=atom)
    assert atom_restore(atom=atom).status == "active"
    with pytest.raises(Conflict):
        atom_restore(atom=atom)


def test_it_restores_an_old_version_as_superseded(domain):
    v1 = atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(1, 2)).atom
    atom_write(domain=domain, context=CONTEXT, claim=HGB_BEATS_RIDGE.format(3, 4))
    atom_retract(atom=v1)
    assert atom_restore(atom=v1).status == "superseded"


def test_it_merges_atoms_into_one_version_that_keeps_history(domain, user):
    e1, e2, e3 = (make_experiment(domain) for _ in range(3))
    a = atom_write(domain=domain, context="trees", claim="Random forest is strong", confidence=0.6,
                   evidence=[(e1.pk, "supports"), (e2.pk, "supports")]).atom
    b = atom_write(domain=domain, context="ensembles", claim="Extra trees do well", confidence=0.8,
                   evidence=[(e2.pk, "contradicts"), (e3.pk, "supports")]).atom
    unrelated = atom_write(domain=domain, context="linear", claim="Lasso underfits").atom
    a.related.add(unrelated)

    merged = atoms_merge(atoms=[a, b], user=user)

    a.refresh_from_db()
    b.refresh_from_db()
    assert a.status == b.status == "superseded"
    assert (merged.status, merged.version, merged.confidence) == ("active", 2, 0.8)
    # The claims are combined, the most confident first; its context is kept.
    assert merged.claim == "Extra trees do well; Random forest is strong"
    assert merged.context == b.context
    assert merged.supersedes == b
    assert set(merged.related.all()) == {a, unrelated}
    # Each evidence row stays with the claim it supports: e2 supports a's claim and contradicts
    # b's, and is cited for each separately, never pooled under one claim.
    rows = set(merged.evidence_links.values_list("experiment_id", "claim", "stance"))
    assert rows == {
        (e1.pk, a.claim, "supports"), (e2.pk, a.claim, "supports"),
        (e2.pk, b.claim, "contradicts"), (e3.pk, b.claim, "supports"),
    }
    assert {(e["experiment_id"], e.get("claim")) for e in merged.summary()["evidence"]} == {
        (e1.pk, a.claim), (e2.pk, a.claim), (e2.pk, b.claim), (e3.pk, b.claim)}
    assert merged.created_by_user == user
    assert stances(a) == {e1.pk: "supports", e2.pk: "supports"}  # old versions keep their evidence
    assert Evidence.objects.count() == 4 + 4


def test_it_merges_atoms_with_one_claim_into_that_claim(domain):
    e1, e2 = make_experiment(domain), make_experiment(domain)
    a = atom_write(domain=domain, context="trees", claim="Random forest is strong", confidence=0.6,
                   evidence=[(e1.pk, "supports")]).atom
    b = atom_write(domain=DomainFactory(), context="x", claim="placeholder").atom
    KnowledgeAtom.objects.filter(pk=b.pk).update(domain=domain, claim=a.claim, confidence=0.7)
    Evidence.objects.create(atom_id=b.pk, experiment=e2)
    merged = atoms_merge(atoms=[a, KnowledgeAtom.objects.get(pk=b.pk)])
    assert merged.claim == a.claim
    assert set(merged.evidence_links.values_list("experiment_id", "claim")) == {(e1.pk, ""), (e2.pk, "")}


def test_it_rebuilds_the_search_index_when_a_migration_dropped_its_triggers(domain):
    from django.db import connection

    from knowledge.fts import fts_ensure

    if connection.vendor != "sqlite":
        pytest.skip("the FTS5 index and its triggers are SQLite's; PostgreSQL searches the table itself")

    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER knowledge_atom_fts_ai")
    assert fts_ensure(connection) is True
    atom = atom_write(domain=domain, context=CONTEXT, claim="Stacking helps").atom
    assert atom_search(query="stacking", domain=domain) == [atom]
    assert fts_ensure(connection) is False


def test_it_refuses_to_merge_across_domains_or_inactive_atoms(domain):
    a = atom_write(domain=domain, context="x", claim="Random forest is strong").atom
    b = atom_write(domain=DomainFactory(), context="y", claim="Extra trees do well").atom
    c = atom_write(domain=domain, context="z", claim="Lasso underfits").atom
    with pytest.raises(InvalidInput, match="same domain"):
        atoms_merge(atoms=[a, b])
    with pytest.raises(InvalidInput, match="at least two"):
        atoms_merge(atoms=[a])
    atom_retract(atom=c)
    with pytest.raises(InvalidInput, match="not active"):
        atoms_merge(atoms=[a, c])
    assert KnowledgeAtom.objects.count() == 3


def test_it_sets_a_validated_confidence(domain):
    atom = atom_write(domain=domain, context="x", claim="Random forest is strong").atom
    assert atom_set_confidence(atom=atom, confidence="0.25").confidence == 0.25
    for bad in (-0.1, 1.01, "high", None, float("inf")):
        with pytest.raises(InvalidInput):
            atom_set_confidence(atom=atom, confidence=bad)
    atom.refresh_from_db()
    assert atom.confidence == 0.25


def test_it_versions_a_second_runs_findings_instead_of_duplicating_them(domain):
    def write_all(findings):
        outcomes = []
        for finding in findings:
            context, claim = finding.split("\n")
            outcomes.append(atom_write(domain=domain, context=context, claim=claim, confidence=0.6).outcome)
        return outcomes

    assert write_all(RUN_FINDINGS) == ["created"] * len(RUN_FINDINGS)
    # The next run finds the same things with other figures and experiment ids.
    rerun = [re.sub(r"\d+", lambda m: str(int(m.group()) + 7), f) for f in RUN_FINDINGS]
    assert write_all(rerun) == ["versioned"] * len(RUN_FINDINGS)
    assert KnowledgeAtom.objects.filter(status="active").count() == len(RUN_FINDINGS)
    assert set(KnowledgeAtom.objects.filter(status="active").values_list("version", flat=True)) == {2}


def test_it_searches_in_the_database_index_kept_on_every_write(domain):
    atom = atom_write(domain=domain, context=CONTEXT, claim="Gradient boosting beats Ridge").atom
    assert atom_search(query="boosting", domain=domain) == [atom]
    assert atom_search(query="boost", domain=domain) == [atom]  # the last word also matches as a prefix
    # An edit outside the services (the admin, a bulk update) is indexed too: triggers keep the index.
    KnowledgeAtom.objects.filter(pk=atom.pk).update(claim="Random forests beat Ridge")
    assert atom_search(query="boosting", domain=domain) == []
    assert atom_search(query="forests", domain=domain) == [atom]
    bulk = KnowledgeAtom.objects.bulk_create([KnowledgeAtom(domain=domain, context=CONTEXT, claim="Forests need depth")])
    assert {a.pk for a in atom_search(query="forests", domain=domain)} == {atom.pk, bulk[0].pk}
    KnowledgeAtom.objects.filter(pk=atom.pk).delete()
    assert atom_search(query="forests", domain=domain) == bulk
    # Words FTS5 would read as syntax are only words here.
    assert atom_search(query='forests" OR NEAR(x', domain=domain) == bulk
    assert atom_search(query="zebra", domain=domain) == []


def test_it_pages_search_results_with_a_total(domain):
    atoms = KnowledgeAtom.objects.bulk_create(
        KnowledgeAtom(domain=domain, context=CONTEXT, claim=f"ensembles help {i}", confidence=i / 100) for i in range(30)
    )
    first = atom_search_page(query="ensembles", domain=domain, limit=20)
    second = atom_search_page(query="ensembles", domain=domain, limit=20, offset=20)
    assert first.count == second.count == 30
    assert len(first.atoms) == 20 and len(second.atoms) == 10
    assert {a.pk for a in first.atoms + second.atoms} == {a.pk for a in atoms}
    atom_retract(atom=atoms[0])
    assert atom_search_page(query="ensembles", domain=domain, status="retracted").atoms == [atoms[0]]
    with pytest.raises(InvalidInput):
        atom_search_page(query="ensembles", offset=-1)
    with pytest.raises(InvalidInput):
        atom_search_page(query="ensembles", status="bogus")
