"""Plain-text analysis behind knowledge linking and search: TF-IDF similarity and a small,
explainable contradiction test. No Django here, so it is easy to test on its own."""

import math
import re
from collections.abc import Sequence
from functools import partial

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

# Figures ("31%", "0.82", "experiments 12 vs 3") are measurements, not what a claim is about:
# two runs that both find "HGB beats Ridge" report different margins and experiment ids.
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*%?")
_TOKEN = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?")
_WORD = re.compile(r"(?u)\b\w+\b")

_NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "cannot", "neither", "nor"})

# Comparison words grouped by what they compare, each with a direction. Two claims are only
# compared on the families they both use: "lower RMSE" and "beats" speak different languages.
_COMPARATORS: dict[str, tuple[str, int]] = {}
for _family, _sign, _words in [
    ("rank", 1, "beat beats beating outperform outperforms outperformed outperforming better best "
                "superior win wins won winning exceed exceeds exceeded dominate dominates"),
    ("rank", -1, "lose loses lost losing underperform underperforms underperformed underperforming "
                 "worse worst inferior trail trails trailed"),
    ("effect", 1, "help helps helped helping improve improves improved improving boost boosts "
                  "boosted benefit benefits"),
    ("effect", -1, "hurt hurts hurting harm harms harmed degrade degrades degraded degrading "
                   "worsen worsens worsened"),
    ("level", 1, "higher increase increases increased increasing more raise raises raised"),
    ("level", -1, "lower decrease decreases decreased decreasing less fewer reduce reduces "
                  "reduced reducing"),
    ("speed", 1, "faster quicker"),
    ("speed", -1, "slower"),
]:
    for _word in _words.split():
        _COMPARATORS[_word] = (_family, _sign)


def normalise(text: str, *, drop_numbers: bool) -> str:
    text = text.lower().replace("\u2019", "'")
    return _NUMBER.sub(" ", text) if drop_numbers else text


def _stem(word: str) -> str:
    # Just enough to let "helps"/"help" and "trees"/"tree" meet; both sides get the same cut.
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def features(text: str, *, drop_numbers: bool = True) -> list[str]:
    """Content words plus each pair of neighbouring content words, unordered.

    The pairs tell "HGB + random forest ensemble" from "HGB beats random forest" better than words
    alone, and being unordered they keep "A beats B" and "B beats A" together, so the
    contradiction test gets to see them.
    """
    words = [
        _stem(w)
        for w in _WORD.findall(normalise(text, drop_numbers=drop_numbers))
        if w not in ENGLISH_STOP_WORDS
    ]
    pairs = ["|".join(sorted(pair)) for pair in zip(words, words[1:], strict=False)]
    return words + pairs


def similarities(text: str, others: Sequence[str], *, drop_numbers: bool = True) -> list[float]:
    """Cosine similarity of `text` to each of `others` in a TF-IDF space fitted on all of them.

    Fitting on the candidate set makes words every atom shares (the domain's context, "rmse")
    weigh less than the words that tell atoms apart.
    """
    if not others:
        return []
    vectorizer = TfidfVectorizer(analyzer=partial(features, drop_numbers=drop_numbers), sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform([text, *others])
    except ValueError:
        # Nothing but stop words and numbers: no basis for similarity.
        return [0.0] * len(others)
    return [float(v) for v in cosine_similarity(matrix[0], matrix[1:]).ravel()]


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text, drop_numbers=True))


def _is_negation(token: str) -> bool:
    return token in _NEGATIONS or token.endswith("n't")


def _sides(tokens: list[str], position: int) -> tuple[set[str], set[str]]:
    """Content words left and right of the comparison word at `position`."""

    def content(words: list[str]) -> set[str]:
        return {
            w for w in words
            if w not in ENGLISH_STOP_WORDS and w not in _COMPARATORS and not _is_negation(w)
        }

    return content(tokens[:position]), content(tokens[position + 1:])


def contradicts(claim_a: str, claim_b: str) -> bool:
    """True when two claims about the same thing say opposite things.

    Each claim gets a polarity: -1 per negation ("not", "doesn't"), times the direction of its
    comparison words in the families both claims use ("beats" +1, "loses" -1). Swapped sides
    around the comparison ("A beats B" vs "B beats A") flip it once more. Opposite polarities
    contradict. "Ridge does not beat HGB" therefore agrees with "HGB beats Ridge", and
    "lower learning rate gives higher accuracy" contradicts "lower learning rate gives lower
    accuracy".
    """
    tokens_a, tokens_b = _tokens(claim_a), _tokens(claim_b)
    comps_a = [(i, *_COMPARATORS[t]) for i, t in enumerate(tokens_a) if t in _COMPARATORS]
    comps_b = [(i, *_COMPARATORS[t]) for i, t in enumerate(tokens_b) if t in _COMPARATORS]
    shared = {family for _, family, _ in comps_a} & {family for _, family, _ in comps_b}

    polarity_a = (-1) ** sum(_is_negation(t) for t in tokens_a)
    polarity_b = (-1) ** sum(_is_negation(t) for t in tokens_b)
    polarity_a *= math.prod(sign for _, family, sign in comps_a if family in shared)
    polarity_b *= math.prod(sign for _, family, sign in comps_b if family in shared)

    if shared:
        pos_a = next(i for i, family, _ in comps_a if family in shared)
        pos_b = next(i for i, family, _ in comps_b if family in shared)
        left_a, right_a = _sides(tokens_a, pos_a)
        left_b, right_b = _sides(tokens_b, pos_b)
        # A word that changed sides only counts when it left its old side entirely; both
        # directions must move, or "HGB beats Ridge on diabetes" / "On diabetes, HGB beats Ridge"
        # would look swapped.
        moved_right = (left_a & right_b) - right_a - left_b
        moved_left = (right_a & left_b) - left_a - right_b
        if moved_right and moved_left:
            polarity_b = -polarity_b

    return polarity_a != polarity_b
