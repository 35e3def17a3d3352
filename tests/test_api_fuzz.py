"""Property-based API fuzzing: schemathesis generates valid and invalid requests for every
operation in the OpenAPI schema and sends them to the WSGI app in-process; no answer may be a 5xx.

Bounded on purpose (a few examples per operation and mode). Work that takes long (a sandboxed
verification, a snapshot, a training run) cannot start here: the only domain has an unfrozen task
with no tools, so runs and experiments get 409 and verify/freeze/generate are only sent with ids
that do not exist."""

import os
import sys
import traceback

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from agentrun.models import AgentEvent, AgentRun
from dojo_site.api import api
from domains.services import domain_create, token_create
from experiments.models import Artifact, Experiment
from knowledge.services import atom_write

# DOJO_FUZZ_EXAMPLES=100 for a longer hunt by hand.
EXAMPLES = int(os.environ.get("DOJO_FUZZ_EXAMPLES", "8"))
# Never sent with the seeded ids: they would run the sandbox, write a snapshot, call Claude, or
# delete the rows the other operations use.
NO_REAL_IDS = {
    ("POST", "/api/domains/{domain_id}/task/tools/verify"),
    ("POST", "/api/domains/{domain_id}/task/freeze"),
    ("POST", "/api/domains/{domain_id}/task/tools/generate"),
    ("DELETE", "/api/domains/{domain_id}"),
}


@pytest.fixture
def seeded(user, workspace, tmp_path):
    domain = domain_create(name="fuzz", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    exp = Experiment.objects.create(domain=domain, train_code="x", code_sha256="0" * 64, state="completed")
    artifact = Artifact.objects.create(experiment=exp, path="train/model.txt", size=1)
    run = AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.COMPLETED)
    AgentEvent.objects.create(run=run, seq=1, type=AgentEvent.Type.FINALIZED, data={})
    atom = atom_write(domain=domain, context="small data", claim="ridge beats trees").atom
    ids = {"domain_id": domain.pk, "experiment_id": exp.pk, "artifact_id": artifact.pk, "run_id": run.pk,
           "atom_id": atom.pk}
    _, token = token_create(user=user, name="fuzz")
    return ids, token, workspace


@pytest.mark.slow
@pytest.mark.django_db
def test_it_never_answers_5xx(seeded):
    ids, token, workspace = seeded
    app = WSGIHandler()
    schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix="/api"))
    schema.app = app
    headers = {"Authorization": f"Bearer {token}"}
    errors: list[str] = []
    failures: list[str] = []
    sent: list[int] = []

    def record(sender, request, **kwargs):
        errors.append(f"{request.method} {request.get_full_path()}: " + "".join(traceback.format_exception(*sys.exc_info()))[-1500:])

    got_request_exception.connect(record, weak=False)
    # As Django's test client does: a request must not close the test's DB connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            key = (operation.method.upper(), operation.path)
            if key[1].endswith("/stream"):
                continue  # an SSE stream: covered by tests/agentrun/test_api.py
            path_ids = {name: ids[name] for name in ids if "{" + name + "}" in operation.path}
            variants = [{}]
            if path_ids and key not in NO_REAL_IDS:
                variants.append(path_ids)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for fixed in variants:
                    _fuzz(operation, mode, fixed, headers, workspace, failures, sent)
    finally:
        got_request_exception.disconnect(record)
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    assert len(sent) > 200  # the cases really ran: strategies that fail to build are skipped
    assert not failures, "\n".join(failures[:10]) + "\n\n" + "\n".join(errors[:5])


def _fuzz(operation, mode, fixed, headers, workspace, failures, sent) -> None:
    try:
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)
    except Exception:  # noqa: BLE001 — e.g. no negative cases possible for this operation
        return

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy, real_workspace=st.booleans())
    def check(case, real_workspace):
        if isinstance(case.body, dict) and "workspace" in case.body and real_workspace:
            # A generated path could be "/" or "."; never scaffold files outside the test's folders.
            case.body["workspace"] = str(workspace)
        elif isinstance(case.body, dict) and isinstance(case.body.get("workspace"), str):
            case.body["workspace"] = str(workspace / "missing")
        response = case.call(headers=headers)
        sent.append(response.status_code)
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except FailureGroup:  # collect every operation's failures, report them together
            failures.append(f"{response.status_code} {case.method} {case.formatted_path} "
                            f"query={case.query!r} body={case.body!r}"[:600])

    check()
