import time
from tests.experiments.conftest import LINEAR
from experiments.services import experiment_run


def test_it_smoke(diabetes):
    t = time.time()
    exp = experiment_run(domain=diabetes, train_code=LINEAR, hypothesis="baseline")
    print("first", time.time() - t, exp.state, exp.error, exp.metrics, exp.holdout_metrics, exp.environment, exp.warnings, exp.stderr_tail[-2000:])
    for i in range(5):
        t = time.time()
        exp = experiment_run(domain=diabetes, train_code=LINEAR, hypothesis="baseline")
        print("again", time.time() - t, exp.total_seconds, exp.train_seconds, exp.state, exp.error, exp.metrics)
    assert exp.state == "completed"
