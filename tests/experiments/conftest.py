import pytest

from experiments.harness import pool
from tests.factories import frozen_domain

LINEAR = """
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture(autouse=True)
def _stop_pools():
    """Warm processes are keyed by DOJO_HOME, which is per test: stop them after each test."""
    yield
    pool.pool_stop_all()


@pytest.fixture
def diabetes(db, workspace):
    return frozen_domain(workspace=workspace, loader="load_diabetes", name="diabetes")


@pytest.fixture
def make_domain(db, tmp_path):
    def make(loader="load_diabetes", **kwargs):
        folder = tmp_path / f"ws-{loader}-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        return frozen_domain(workspace=folder, loader=loader, **kwargs)

    return make
