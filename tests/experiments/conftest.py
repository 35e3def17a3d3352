import pytest

from experiments.harness import pool
from tests.factories import frozen_domain

LINEAR = """
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    return LinearRegression().fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture(scope="module", autouse=True)
def _stop_pools():
    """Warm processes carry over between the tests of a module (same snapshot and workspace),
    which keeps these tests fast; they are stopped at the end of the module."""
    yield
    pool.pool_stop_all()


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-workspace")


def _workspace_for(shared_workspace, loader: str):
    # One folder per dataset: SETUP.md (never overwritten by domain_create) names the loader.
    folder = shared_workspace / loader
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def diabetes(db, shared_workspace):
    return frozen_domain(
        workspace=_workspace_for(shared_workspace, "load_diabetes"), loader="load_diabetes", name="diabetes",
        share_snapshot=True,
    )


@pytest.fixture
def make_domain(db, shared_workspace):
    """A frozen domain on a scikit-learn loader: make_domain("load_wine", name=..., config=...)."""

    def make(loader: str = "load_diabetes", **kwargs):
        kwargs.setdefault("share_snapshot", True)
        return frozen_domain(workspace=_workspace_for(shared_workspace, loader), loader=loader, **kwargs)

    return make
