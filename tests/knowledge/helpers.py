from experiments.models import Experiment


def make_experiment(domain, **fields) -> Experiment:
    fields.setdefault("train_code", "def train(X_train, y_train, X_test, *, artifacts_dir): ...")
    fields.setdefault("code_sha256", "0" * 64)
    return Experiment.objects.create(domain=domain, **fields)


def loser(leader, family, pct, a, b):
    return (
        f"Choosing a model family on domain diabetes (regression): {family}.\n"
        f"{leader} beats {family} by {pct}% RMSE on validation (experiments {a} vs {b})."
    )


# Findings shaped like the built-in researcher's, as one run writes them.
RUN_FINDINGS = [
    "Which model to start from on domain diabetes (regression, rmse on validation).\n"
    "The best configuration found is HistGradientBoosting (learning_rate=0.05): rmse 53.2 on validation "
    "(experiment 14; seed spread 0.3 over 3 seeds).",
    loser("HistGradientBoosting", "Ridge", 31, 12, 3),
    loser("HistGradientBoosting", "k-NN", 20, 12, 5),
    loser("HistGradientBoosting", "Random forest", 8, 12, 7),
    "Target transform for HistGradientBoosting on domain diabetes (regression).\n"
    "A Yeo-Johnson target transform improves HistGradientBoosting by 1.2% RMSE on validation "
    "(experiments 20 vs 12).",
    "Ensembling HistGradientBoosting + Random forest on domain diabetes (regression).\n"
    "Averaging HistGradientBoosting + Random forest improves on the best single model by 0.8% RMSE "
    "on validation (experiments 25 vs 12).",
]
