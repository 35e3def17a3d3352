import threading

import pytest
from django.db import connection

from knowledge.models import KnowledgeAtom
from knowledge.services import atom_write
from tests.factories import DomainFactory


@pytest.mark.django_db(transaction=True)
def test_it_versions_one_chain_when_writers_race():
    """Four threads write the same finding at once: one atom and three versions, never two heads."""
    domain = DomainFactory()
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def write(i: int) -> None:
        try:
            start.wait(timeout=10)
            atom_write(domain=domain, context="Regression on diabetes",
                       claim=f"HistGradientBoosting beats Ridge by {30 + i}% RMSE")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert KnowledgeAtom.objects.filter(status="active").count() == 1
    head = KnowledgeAtom.objects.get(status="active")
    assert head.version == 4
    assert [a.version for a in head.older_versions()] == [3, 2, 1]
