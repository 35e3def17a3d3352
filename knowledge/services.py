"""Knowledge services: write-with-linking, search, and the curation the admin performs.

Atoms are versioned rather than edited: an agreeing near-duplicate becomes a new version that
supersedes the old one, so the history of a finding stays readable.
"""

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from dojo_site.errors import Conflict, InvalidInput
from domains.models import Domain
from experiments.models import Experiment
from experiments.ranking import UNRANKED_STATES
from knowledge import text
from knowledge.models import Evidence, KnowledgeAtom

Outcome = Literal["created", "versioned", "contradicted"]
Stance = Evidence.Stance

SEARCH_LIMIT_MAX = 100


@dataclass(frozen=True)
class AtomWriteResult:
    atom: KnowledgeAtom
    outcome: Outcome
    # The near-duplicate that decided the outcome (None for "created"), with its similarity.
    matched: KnowledgeAtom | None = None
    similarity: float = 0.0


def _clean_text(value: Any, *, field: str, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text.")
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{field} must not be empty.")
    return value


def _clean_confidence(value: Any) -> float:
    # bool is an int subclass; True as a confidence is a caller bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidInput(f"Confidence must be a number between 0 and 1, got {value!r}.")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"Confidence must be a number between 0 and 1, got {value!r}.") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidInput(f"Confidence must be between 0 and 1, got {value!r}.")
    return number


def _clean_evidence(evidence: Iterable[Any] | None, *, domain: Domain | None) -> dict[int, str]:
    """Return {experiment_id: stance} after checking every experiment exists (in the domain)."""
    stances: dict[int, str] = {}
    for item in evidence or []:
        if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidInput(
                f"Evidence items are (experiment_id, 'supports' | 'contradicts'), got {item!r}."
            )
        experiment_id, stance = item
        if isinstance(experiment_id, bool) or not isinstance(experiment_id, int):
            raise InvalidInput(f"Evidence experiment id must be an integer, got {experiment_id!r}.")
        if stance not in Stance.values:
            raise InvalidInput(f"Evidence stance must be 'supports' or 'contradicts', got {stance!r}.")
        if stances.get(experiment_id, stance) != stance:
            raise InvalidInput(f"Experiment {experiment_id} is given as both supporting and contradicting.")
        stances[experiment_id] = stance
    if not stances:
        return stances
    found = dict(Experiment.objects.filter(pk__in=stances).values_list("pk", "domain_id"))
    missing = sorted(set(stances) - set(found))
    if missing:
        raise InvalidInput(f"Unknown experiment(s): {', '.join(map(str, missing))}.")
    if domain is not None:
        foreign = sorted(pk for pk, domain_id in found.items() if domain_id != domain.pk)
        if foreign:
            raise InvalidInput(
                f"Experiment(s) {', '.join(map(str, foreign))} belong to another domain than {domain.name}."
            )
    # Quarantined experiments are no evidence of anything until a person clears them
    # (experiments/quarantine.py): they are left out, not refused, so a finding still records.
    held = set(Experiment.objects.filter(pk__in=stances, quarantine_state__in=UNRANKED_STATES).values_list("pk", flat=True))
    return {pk: stance for pk, stance in stances.items() if pk not in held}


def _add_evidence(atom: KnowledgeAtom, stances: dict[int, str], *, claim: str = "") -> None:
    """Link experiments to `atom` as evidence for `claim` ("" = the atom's own claim); a stance
    given here replaces an earlier one."""
    for experiment_id, stance in stances.items():
        Evidence.objects.update_or_create(
            atom=atom, experiment_id=experiment_id, claim=claim, defaults={"stance": stance}
        )


# Evidence as {(experiment_id, claim): stance}; claim "" is the atom's own claim.
EvidenceRows = dict[tuple[int, str], str]


def _evidence_of(atom: KnowledgeAtom, *, claim_of_own: str = "") -> EvidenceRows:
    """The atom's evidence rows; rows for its own claim are keyed with `claim_of_own`."""
    rows = atom.evidence_links.order_by("pk").values_list("experiment_id", "claim", "stance")
    return {(pk, claim or claim_of_own): stance for pk, claim, stance in rows}


def _own(stances: dict[int, str]) -> EvidenceRows:
    return {(pk, ""): stance for pk, stance in stances.items()}


def _flip(stances: dict[int, str]) -> dict[int, str]:
    opposite = {Stance.SUPPORTS: Stance.CONTRADICTS, Stance.CONTRADICTS: Stance.SUPPORTS}
    return {pk: opposite[Stance(stance)].value for pk, stance in stances.items()}


def _raised(old: float, new: float) -> float:
    """Confidence after agreeing evidence: it moves toward 1 by half the new confidence."""
    return min(1.0, max(new, old + (1.0 - old) * new / 2.0))


def _lowered(old: float, against: float) -> float:
    """Confidence after contradicting evidence: it loses up to half of itself."""
    return max(0.0, old * (1.0 - against / 2.0))


def _creator_fields(*, run: models.Model | None, user: models.Model | None) -> dict[str, Any]:
    # The run arrives as an AgentRun; knowledge never imports agentrun, so only its pk is used.
    return {
        "created_by_run_id": run.pk if run is not None else None,
        "created_by_user_id": user.pk if user is not None else None,
    }


def _active_atoms(domain: Domain | None) -> models.QuerySet[KnowledgeAtom]:
    atoms = KnowledgeAtom.objects.filter(status=KnowledgeAtom.Status.ACTIVE)
    return atoms.filter(domain=domain) if domain is not None else atoms.filter(domain__isnull=True)


# Advisory-lock key space of knowledge writes (any constant no other lock of ours uses).
_KNOWLEDGE_LOCK_SPACE = 0x6B6E6F77  # "know"


def _writers_serialised(domain: Domain | None) -> None:
    """Make concurrent atom_write calls of one domain take turns, until the transaction ends.

    SQLite's IMMEDIATE transactions already serialise every writer. On PostgreSQL, locking the
    domain's active atoms (select_for_update) is not enough: the first write of a claim has no row
    to lock yet, so four writers of one new finding all saw "no match" and created four atoms. A
    transaction-scoped advisory lock per domain covers that first write too."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            [_KNOWLEDGE_LOCK_SPACE, (domain.pk if domain is not None else 0) % 2**31],
        )


def atom_write(
    *,
    domain: Domain | None,
    context: str,
    claim: str,
    action: str = "",
    confidence: float = 0.5,
    evidence: Iterable[tuple[int, str]] | None = None,
    run: models.Model | None = None,
    user: models.Model | None = None,
) -> AtomWriteResult:
    """Write a finding, linked to what the domain already knows.

    Compares context + claim with the domain's active atoms (TF-IDF cosine, threshold
    settings.DOJO_KNOWLEDGE_SIMILARITY). The best match at or above the threshold decides:
    - it agrees: a new version replaces it (confidence raised, evidence merged) → "versioned";
    - the claim says the opposite, or the evidence given mostly contradicts it: its confidence is
      lowered and the contradiction recorded → "contradicted". An opposite claim is kept as its
      own atom, related to the one it contradicts; contradicting evidence alone is added to the
      match, which is then the returned atom;
    - no match: a new atom → "created".
    Global atoms (domain None) only link with global atoms.
    """
    context = _clean_text(context, field="Context", required=True)
    claim = _clean_text(claim, field="Claim", required=True)
    action = _clean_text(action, field="Action", required=False)
    confidence = _clean_confidence(confidence)
    stances = _clean_evidence(evidence, domain=domain)
    creator = _creator_fields(run=run, user=user)
    threshold = float(settings.DOJO_KNOWLEDGE_SIMILARITY)

    with transaction.atomic():
        _writers_serialised(domain)
        candidates = list(_active_atoms(domain).select_for_update().order_by("pk"))
        scores = text.similarities(
            f"{context}\n{claim}", [atom.linking_text() for atom in candidates]
        )
        matches = sorted(
            ((score, atom) for score, atom in zip(scores, candidates, strict=True) if score >= threshold),
            key=lambda pair: (-round(pair[0], 9), -pair[1].pk),
        )
        if not matches:
            atom = KnowledgeAtom.objects.create(
                domain=domain, context=context, claim=claim, action=action,
                confidence=confidence, **creator,
            )
            _add_evidence(atom, stances)
            return AtomWriteResult(atom=atom, outcome="created")

        # Among equally similar matches prefer one that agrees: "A beats B" and "B beats A" have
        # the same words, and a new "A beats B" should strengthen the first, not fight the second.
        best_score = round(matches[0][0], 9)
        tied = [pair for pair in matches if round(pair[0], 9) == best_score]
        score, match = next(
            (pair for pair in tied if not text.contradicts(pair[1].claim, claim)), tied[0]
        )

        if text.contradicts(match.claim, claim):
            contested = match.confidence
            match.confidence = _lowered(match.confidence, confidence)
            match.contradictions += 1
            match.save(update_fields=["confidence", "contradictions", "updated_at"])
            # What supports the opposite claim contradicts the match, and vice versa.
            _add_evidence(match, _flip(stances))
            atom = KnowledgeAtom.objects.create(
                domain=domain, context=context, claim=claim, action=action,
                confidence=_lowered(confidence, contested), contradictions=1, **creator,
            )
            _add_evidence(atom, stances)
            atom.related.add(match)
            return AtomWriteResult(atom=atom, outcome="contradicted", matched=match, similarity=score)

        against = sum(stance == Stance.CONTRADICTS for stance in stances.values())
        if against > len(stances) - against:
            match.confidence = _lowered(match.confidence, confidence)
            match.contradictions += 1
            match.save(update_fields=["confidence", "contradictions", "updated_at"])
            _add_evidence(match, stances)
            return AtomWriteResult(atom=match, outcome="contradicted", matched=match, similarity=score)

        atom = _supersede(
            [match],
            context=context,
            claim=claim,
            action=action or match.action,
            confidence=_raised(match.confidence, confidence),
            evidence={**_evidence_of(match), **_own(stances)},
            creator=creator,
        )
        return AtomWriteResult(atom=atom, outcome="versioned", matched=match, similarity=score)


def _supersede(
    previous: list[KnowledgeAtom],
    *,
    context: str,
    claim: str,
    action: str,
    confidence: float,
    evidence: EvidenceRows,
    creator: dict[str, Any],
) -> KnowledgeAtom:
    """Create the version that replaces `previous` (the first is the one it `supersedes`)."""
    merged = {atom.pk for atom in previous}
    atom = KnowledgeAtom.objects.create(
        domain=previous[0].domain,
        context=context,
        claim=claim,
        action=action,
        confidence=confidence,
        version=max(a.version for a in previous) + 1,
        supersedes=previous[0],
        contradictions=sum(a.contradictions for a in previous),
        **creator,
    )
    by_claim: dict[str, dict[int, str]] = {}
    for (pk, for_claim), stance in evidence.items():
        by_claim.setdefault("" if for_claim == claim else for_claim, {})[pk] = stance
    for for_claim, stances in by_claim.items():
        _add_evidence(atom, stances, claim=for_claim)
    related = {
        other.pk
        for old in previous
        for other in old.related.all()
        if other.pk not in merged
    }
    # The other merged atoms stay reachable from the new version through `related`; the
    # single `supersedes` key can only name one of them.
    related |= merged - {previous[0].pk}
    atom.related.add(*related)
    KnowledgeAtom.objects.filter(pk__in=merged).update(status=KnowledgeAtom.Status.SUPERSEDED)
    for old in previous:
        old.status = KnowledgeAtom.Status.SUPERSEDED
    return atom


# --- search ------------------------------------------------------------------------------------
# Search runs in the database: SQLite's FTS5 index (kept by triggers, migration 0002) ranked by
# BM25, or PostgreSQL's full-text search. The query's words are OR-ed (stop words dropped, the
# last word also matches as a prefix, for type-ahead); atoms sharing no word are left out. Order:
# active first, then relevance, then confidence, then newest.

_SEARCH_WORD = re.compile(r"\w+")
_SEARCH_WORDS_MAX = 32


@dataclass(frozen=True)
class AtomSearchPage:
    atoms: list[KnowledgeAtom]  # each with a `score` attribute (higher is more relevant)
    count: int  # every match, over all pages


def _search_words(query: str) -> list[str]:
    words = _SEARCH_WORD.findall(query.lower())
    kept = [w for w in words if w not in ENGLISH_STOP_WORDS] or words
    return list(dict.fromkeys(kept))[:_SEARCH_WORDS_MAX]


def _matches_sqlite(atoms: models.QuerySet[KnowledgeAtom], words: list[str]) -> models.QuerySet[KnowledgeAtom]:
    # Quoted, so no word is read as FTS5 syntax (AND, NEAR, a column filter).
    match = " OR ".join([*(f'"{w}"' for w in words[:-1]), f'"{words[-1]}"*'])
    table = KnowledgeAtom._meta.db_table
    # A join with the FTS5 table (knowledge/fts.py); its `rank` is BM25, lower is better.
    return atoms.extra(
        tables=["knowledge_atom_fts"],
        where=[f"knowledge_atom_fts.rowid = {table}.id", "knowledge_atom_fts MATCH %s"],
        params=[match],
        select={"score": "-knowledge_atom_fts.rank"},
    )


def _matches_postgres(atoms: models.QuerySet[KnowledgeAtom], words: list[str]) -> models.QuerySet[KnowledgeAtom]:
    from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector

    # \w+ words are safe in a raw tsquery; the last one also matches as a prefix.
    query = SearchQuery(" | ".join([*words[:-1], f"{words[-1]}:*"]), search_type="raw", config="english")
    vector = SearchVector("context", "claim", "action", config="english")
    return atoms.annotate(search=vector).filter(search=query).annotate(score=SearchRank(vector, query))


def _status_rank() -> models.Case:
    return models.Case(
        models.When(status=KnowledgeAtom.Status.ACTIVE, then=models.Value(0)),
        models.When(status=KnowledgeAtom.Status.SUPERSEDED, then=models.Value(1)),
        default=models.Value(2),
        output_field=models.IntegerField(),
    )


def atom_search_page(
    *,
    query: str,
    domain: Domain | None = None,
    status: str | None = None,
    limit: int = 10,
    offset: int = 0,
    visible: Q | None = None,
) -> AtomSearchPage:
    """One page of atoms matching `query` (see the note above for the order) and the total count.

    With a domain: that domain's atoms and global ones; without: every atom (of those `visible`
    lets through: domains.permissions.knowledge_visible_q for a user). `status` keeps one status
    only. Raises InvalidInput for an empty query, a limit outside 1..SEARCH_LIMIT_MAX, a negative
    offset or an unknown status. Atoms come with their domain and evidence links loaded."""
    query = _clean_text(query, field="Query", required=True)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise InvalidInput(f"Limit must be an integer from 1 to {SEARCH_LIMIT_MAX}, got {limit!r}.")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput(f"Offset must be a non-negative integer, got {offset!r}.")
    if status is not None and status not in KnowledgeAtom.Status.values:
        raise InvalidInput(f"Status must be one of {', '.join(KnowledgeAtom.Status.values)}, got {status!r}.")
    words = _search_words(query)
    if not words:
        return AtomSearchPage(atoms=[], count=0)
    atoms = KnowledgeAtom.objects.all()
    if domain is not None:
        atoms = atoms.filter(Q(domain=domain) | Q(domain__isnull=True))
    if visible is not None:
        atoms = atoms.filter(visible)
    if status:
        atoms = atoms.filter(status=status)
    matches = (_matches_postgres if connection.vendor == "postgresql" else _matches_sqlite)(atoms, words)
    ranked = list(
        matches.annotate(status_rank=_status_rank())
        .order_by("status_rank", "-score", "-confidence", "-pk")
        .values_list("pk", "score")[offset:offset + limit]
    )
    count = matches.count() if len(ranked) == limit or offset else len(ranked)
    loaded = atoms_for_display(KnowledgeAtom.objects.filter(pk__in=[pk for pk, _ in ranked])).in_bulk()
    results = []
    for pk, score in ranked:
        atom = loaded[pk]
        atom.score = float(score)
        results.append(atom)
    return AtomSearchPage(atoms=results, count=count)


def atom_search(
    *, query: str, domain: Domain | None = None, limit: int = 10, visible: Q | None = None
) -> list[KnowledgeAtom]:
    """The first `limit` atoms of atom_search_page (same rules, same errors)."""
    return atom_search_page(query=query, domain=domain, limit=limit, visible=visible).atoms


def atoms_for_display(atoms: models.QuerySet[KnowledgeAtom]) -> models.QuerySet[KnowledgeAtom]:
    """Atoms with what pages and the API show loaded at once: the domain, what each supersedes,
    and the evidence links (their experiment ids; experiments themselves are not loaded)."""
    evidence = Evidence.objects.order_by("experiment_id")
    return atoms.select_related("domain").prefetch_related(models.Prefetch("evidence_links", queryset=evidence))


def atom_list_for_context(*, domain: Domain, limit: int = 20) -> list[KnowledgeAtom]:
    """The domain's active atoms for an agent's context: most confident first, then newest.
    The order is total (pk breaks ties), so the same knowledge gives the same prompt."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"Limit must be a positive integer, got {limit!r}.")
    atoms = _active_atoms(domain).order_by("-confidence", "-created_at", "-pk")
    return list(atoms[:limit])


def _locked(atom: KnowledgeAtom) -> KnowledgeAtom:
    return KnowledgeAtom.objects.select_for_update().get(pk=atom.pk)


def atom_retract(*, atom: KnowledgeAtom) -> KnowledgeAtom:
    """Mark an atom as wrong. It stays visible (and searchable, ranked last) as a record."""
    with transaction.atomic():
        atom = _locked(atom)
        if atom.status == KnowledgeAtom.Status.RETRACTED:
            raise Conflict(f"Atom {atom.pk} is already retracted.")
        atom.status = KnowledgeAtom.Status.RETRACTED
        atom.save(update_fields=["status", "updated_at"])
    return atom


def atom_restore(*, atom: KnowledgeAtom) -> KnowledgeAtom:
    """Undo a retraction: the atom becomes active again, or superseded when a newer version of
    it exists that is not retracted."""
    with transaction.atomic():
        atom = _locked(atom)
        if atom.status != KnowledgeAtom.Status.RETRACTED:
            raise Conflict(f"Atom {atom.pk} is not retracted.")
        replaced = atom.superseded_by.exclude(status=KnowledgeAtom.Status.RETRACTED).exists()
        atom.status = KnowledgeAtom.Status.SUPERSEDED if replaced else KnowledgeAtom.Status.ACTIVE
        atom.save(update_fields=["status", "updated_at"])
    return atom


def atoms_merge(
    *, atoms: Iterable[KnowledgeAtom], user: models.Model | None = None
) -> KnowledgeAtom:
    """Merge active atoms of one domain into one new version that supersedes them all.

    The claim combines the atoms' distinct claims, most confident first ("A; B"); the most
    confident atom gives the context and action and is the one `supersedes` names; the others are
    linked as related. Every evidence row is kept with the claim it was evidence for (an
    experiment that supports A is never cited for B); the confidence is the highest, the
    contradictions the sum.
    """
    pks = {atom.pk for atom in atoms}
    if len(pks) < 2:
        raise InvalidInput("Select at least two atoms to merge.")
    with transaction.atomic():
        selected = list(KnowledgeAtom.objects.select_for_update().filter(pk__in=pks))
        if len(selected) != len(pks):
            raise InvalidInput("Some of the selected atoms no longer exist.")
        inactive = sorted(a.pk for a in selected if a.status != KnowledgeAtom.Status.ACTIVE)
        if inactive:
            raise InvalidInput(
                f"Only active atoms can be merged; not active: {', '.join(map(str, inactive))}."
            )
        if len({a.domain_id for a in selected}) != 1:
            raise InvalidInput("Only atoms of the same domain can be merged.")
        selected.sort(key=lambda a: (-a.confidence, -a.version, -a.pk))
        claims = list(dict.fromkeys(a.claim for a in selected))
        evidence: EvidenceRows = {}
        for old in reversed(selected):
            evidence.update(_evidence_of(old, claim_of_own=old.claim))
        primary = selected[0]
        return _supersede(
            selected,
            context=primary.context,
            claim="; ".join(claims),
            action=primary.action,
            confidence=primary.confidence,
            evidence=evidence,
            creator=_creator_fields(run=None, user=user),
        )


def atom_set_confidence(*, atom: KnowledgeAtom, confidence: Any) -> KnowledgeAtom:
    confidence = _clean_confidence(confidence)
    with transaction.atomic():
        atom = _locked(atom)
        atom.confidence = confidence
        atom.save(update_fields=["confidence", "updated_at"])
    return atom
