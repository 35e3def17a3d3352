"""Bad input to the experiments API: 4xx JSON, never a 500 (the happy paths are in test_web_api_cli.py)."""

import pytest

from experiments.models import Experiment
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db

HUGE = 2**70  # more than SQLite's INTEGER or PostgreSQL's bigint holds


@pytest.mark.parametrize("url", [
    f"/api/domains/{{domain}}/experiments?offset={HUGE}",
    f"/api/domains/{HUGE}/experiments",
    f"/api/experiments/{HUGE}",
    f"/api/experiments/{HUGE}/code",
    f"/api/experiments/{HUGE}/artifacts/1",
    f"/api/experiments/1/artifacts/{HUGE}",
])
def test_it_answers_422_to_numbers_no_database_can_hold(client_logged_in, url):
    domain = DomainFactory()
    response = client_logged_in.get(url.format(domain=domain.pk))
    assert response.status_code == 422 and "detail" in response.json()


@pytest.mark.parametrize("payload", [{"code": "x", "seed": HUGE}, {"code": "x", "parent_id": HUGE}])
def test_it_refuses_a_run_with_numbers_out_of_range(client_logged_in, payload):
    domain = DomainFactory()
    response = client_logged_in.post(f"/api/domains/{domain.pk}/experiments", payload, content_type="application/json")
    assert response.status_code == 422 and "detail" in response.json()
    assert not Experiment.objects.exists()
