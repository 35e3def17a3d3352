"""NUL characters (U+0000) never break a write: PostgreSQL refuses them in text and jsonb, SQLite stores
them and they later break subprocess arguments. The database backends strip them (dojo_site/db).
CI runs this module on SQLite and on PostgreSQL."""

import pytest

from agentrun.models import AgentEvent, AgentRun
from agentrun.session import RunSession
from domains.services import domain_update
from experiments.harness import pool
from experiments.models import Experiment
from experiments.services import experiment_run
from knowledge.models import KnowledgeAtom
from tests.factories import DomainFactory, frozen_domain

PRINTS_NUL = """
import sys
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("before\\x00after")
    print("err\\x00or", file=sys.stderr)
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture(scope="module", autouse=True)
def _stop_pools():
    yield
    pool.pool_stop_all()


@pytest.mark.django_db
def test_it_completes_an_experiment_whose_train_prints_nul_and_whose_hypothesis_has_one(workspace):
    domain = frozen_domain(workspace=workspace, loader="load_diabetes", name="nul-logs")
    exp = experiment_run(domain=domain, train_code=PRINTS_NUL, hypothesis="linear\x00model",
                         variables={"note": "a\x00b"})
    exp.refresh_from_db()
    assert exp.state == Experiment.State.COMPLETED, exp.error
    assert "beforeafter" in exp.stdout_tail and "\x00" not in exp.stdout_tail
    assert "error" in exp.stderr_tail
    assert exp.hypothesis == "linearmodel"
    assert exp.variables == {"note": "ab"}


@pytest.mark.django_db
def test_it_stores_a_knowledge_atom_with_nul_through_the_api(client_logged_in):
    domain = DomainFactory()
    answer = client_logged_in.post(
        "/api/knowledge", {"domain_id": domain.pk, "context": "ctx\x00", "claim": "HGB\x00 beats Ridge"},
        content_type="application/json",
    )
    assert answer.status_code in (200, 201), answer.content
    atom = KnowledgeAtom.objects.get()
    assert atom.claim == "HGB beats Ridge" and atom.context == "ctx"


@pytest.mark.django_db
def test_it_records_a_run_event_whose_data_holds_nul():
    domain = DomainFactory()
    run = AgentRun.objects.create(domain=domain, backend="builtin", prompt="p\x00")
    session = RunSession(run=run, context={})
    session.emit("text", {"text": "model said \x00", "nested": ["a\x00", {"k\x00": "v"}]})
    event = AgentEvent.objects.get(run=run)
    assert event.data == {"text": "model said ", "nested": ["a", {"k": "v"}]}
    run.refresh_from_db()
    assert run.prompt == "p"


@pytest.mark.django_db
def test_it_keeps_nul_out_of_domain_text():
    domain = DomainFactory()
    domain_update(domain=domain, description="my\x00 domain")
    domain.refresh_from_db()
    assert domain.description == "my domain"
