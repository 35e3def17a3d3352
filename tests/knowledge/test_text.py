import pytest

from knowledge import text
from tests.knowledge.helpers import RUN_FINDINGS, loser


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HistGradientBoosting beats Ridge by 31% RMSE", "Ridge beats HistGradientBoosting by 2% RMSE"),
        ("Scaling features helps logistic regression", "Scaling features does not help logistic regression"),
        ("A log target transform helps Ridge", "A log target transform hurts Ridge"),
        ("Random forest is better than k-NN", "Random forest is worse than k-NN"),
        ("A lower learning rate gives higher accuracy", "A lower learning rate gives lower accuracy"),
        ("Increasing max_depth improves HGB", "Increasing max_depth doesn't improve HGB"),
        ("Interactions never help Ridge", "Interactions help Ridge"),
    ],
)
def test_it_detects_opposite_claims(a, b):
    assert text.contradicts(a, b)
    assert text.contradicts(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HistGradientBoosting beats Ridge by 31% RMSE", "HistGradientBoosting beats Ridge by 28% RMSE"),
        ("HGB beats Ridge on diabetes", "On diabetes, HGB beats Ridge"),
        ("Ridge loses to HGB", "HGB beats Ridge"),
        ("Ridge does not beat HGB", "HGB beats Ridge"),
        ("A higher learning rate gives lower accuracy", "A lower learning rate gives higher accuracy"),
        ("Scaling features helps logistic regression", "Feature scaling helps logistic regression a lot"),
        # Different comparison vocabularies are not compared with each other.
        ("HGB gets a lower RMSE than Ridge", "HGB beats Ridge"),
    ],
)
def test_it_lets_agreeing_claims_agree(a, b):
    assert not text.contradicts(a, b)
    assert not text.contradicts(b, a)


def test_it_scores_rephrased_findings_above_unrelated_ones():
    new = "regression\nHistGradientBoosting beats Ridge by 28% RMSE (experiments 15 vs 4)"
    scores = text.similarities(
        new,
        [
            "regression\nHistGradientBoosting beats Ridge by 31% RMSE (experiments 12 vs 3)",
            "regression\nA log target transform helps on skewed targets",
        ],
    )
    assert scores[0] > 0.99  # only the figures differ, and figures are not what a claim is about
    assert scores[1] < 0.2


def test_it_gives_zero_similarity_when_there_are_no_content_words():
    assert text.similarities("the of and 42", ["HGB beats Ridge"]) == [0.0]
    assert text.similarities("anything", []) == []


def test_it_keeps_one_runs_distinct_findings_apart(settings):
    for i, finding in enumerate(RUN_FINDINGS[1:], start=1):
        scores = text.similarities(finding, RUN_FINDINGS[:i])
        assert max(scores) < settings.DOJO_KNOWLEDGE_SIMILARITY, (i, scores)


def test_it_matches_the_same_finding_from_a_later_run():
    again = loser("HistGradientBoosting", "k-NN", 24, 40, 41)
    scores = text.similarities(again, RUN_FINDINGS)
    assert scores.index(max(scores)) == 2
    assert max(scores) > 0.99
    opposite = loser("k-NN", "HistGradientBoosting", 2, 40, 41).replace(
        "family on domain diabetes (regression): HistGradientBoosting", "family on domain diabetes (regression): k-NN"
    )
    scores = text.similarities(opposite, RUN_FINDINGS)
    assert scores.index(max(scores)) == 2
    assert max(scores) > 0.8
