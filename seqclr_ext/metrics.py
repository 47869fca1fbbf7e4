"""Text-recognition metrics (DESIGN.md "Conventions"): word accuracy, accuracy up to one
edit (ED1), CER, WER and the ICDAR 2019 normalized edit distance score.

Every metric takes parallel sequences of predicted and ground-truth strings. With
``alphanumeric=True`` both sides are lower-cased and stripped of every character outside
``[0-9a-z]`` first: the 36-symbol, case-insensitive protocol of the scene-text benchmarks
(IIIT5K, IC03, IC13). Labels left empty by that normalization (pure punctuation) have
nothing to read under the protocol and are not scored: against an empty reference any
prediction is all insertions, which pushed the corpus WER above 1 (``evaluate`` counts
them, ``empty_labels``). Pure Python, no torch: usable from any evaluation script.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

__all__ = [
    "edit_distance",
    "to_alphanumeric",
    "word_accuracy",
    "ed1_accuracy",
    "cer",
    "wer",
    "one_minus_ned",
    "evaluate",
]

_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit-cost insert, delete, substitute) between two sequences:
    strings for characters, lists of strings for words. O(len(a)·len(b)) time, two rows of
    O(min(len(a), len(b))) memory."""
    # Strip the common prefix and suffix: recognizer outputs mostly differ from the label
    # by a few characters, so this often leaves almost nothing for the DP.
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a  # the DP rows run over the shorter sequence
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def to_alphanumeric(text: str) -> str:
    """The 36-symbol protocol's view of a string: lower-cased, only ``[0-9a-z]`` kept."""
    return _NOT_ALNUM.sub("", text.lower())


def _scored(
    predictions: Sequence[str], labels: Sequence[str], alphanumeric: bool
) -> list[tuple[str, str]]:
    """The (prediction, label) pairs that are scored, as given: with ``alphanumeric``,
    those whose label keeps a character after normalization."""
    if len(predictions) != len(labels):
        raise ValueError(
            f"predictions and labels differ in length: {len(predictions)} vs {len(labels)}"
        )
    if not labels:
        raise ValueError("no samples to evaluate")
    pairs = [(p, g) for p, g in zip(predictions, labels) if not alphanumeric or to_alphanumeric(g)]
    if not pairs:
        raise ValueError(f"no samples to evaluate: all {len(labels)} labels are empty under "
                         "alphanumeric normalization")
    return pairs


def _pairs(
    predictions: Sequence[str], labels: Sequence[str], alphanumeric: bool
) -> list[tuple[str, str]]:
    """The scored pairs, normalized."""
    pairs = _scored(predictions, labels, alphanumeric)
    if alphanumeric:
        return [(to_alphanumeric(p), to_alphanumeric(g)) for p, g in pairs]
    return pairs


def _char_stats(
    predictions: Sequence[str], labels: Sequence[str], alphanumeric: bool
) -> list[tuple[int, int, int]]:
    """(edit distance, len(prediction), len(label)) per sample, after normalization."""
    return [
        (edit_distance(p, g), len(p), len(g)) for p, g in _pairs(predictions, labels, alphanumeric)
    ]


def _ratio(errors: int, total: int) -> float:
    # An all-empty reference has no rate to speak of: 0 when nothing was predicted either,
    # infinite otherwise (any insertion is infinitely many errors per reference unit).
    if total == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / total


def word_accuracy(
    predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False
) -> float:
    """Fraction of samples whose prediction equals the label exactly."""
    pairs = _pairs(predictions, labels, alphanumeric)
    return sum(p == g for p, g in pairs) / len(pairs)


def ed1_accuracy(
    predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False
) -> float:
    """Fraction of samples within one character edit of the label (edit distance ≤ 1)."""
    stats = _char_stats(predictions, labels, alphanumeric)
    return sum(d <= 1 for d, _, _ in stats) / len(stats)


def cer(predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False) -> float:
    """Character error rate: total character edit distance / total label characters (a
    corpus-level ratio, so long labels weigh more than short ones)."""
    stats = _char_stats(predictions, labels, alphanumeric)
    return _ratio(sum(d for d, _, _ in stats), sum(n for _, _, n in stats))


def _words(text: str, alphanumeric: bool) -> list[str]:
    words = text.split()
    if alphanumeric:
        # Normalize word by word: normalizing the whole line first would delete the spaces.
        words = [w for w in map(to_alphanumeric, words) if w]
    return words


def wer(predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False) -> float:
    """Word error rate: total word-level edit distance / total label words, words being
    whitespace-separated tokens. With ``alphanumeric`` each word is normalized and words
    left empty (pure punctuation) are dropped. Above 1 when predictions hold more words
    than their labels (insertions)."""
    errors = total = 0
    # The raw strings: normalization works per word here.
    for p, g in _scored(predictions, labels, alphanumeric):
        pw, gw = _words(p, alphanumeric), _words(g, alphanumeric)
        errors += edit_distance(pw, gw)
        total += len(gw)
    return _ratio(errors, total)


def _ned_score(stats: list[tuple[int, int, int]]) -> float:
    # ED / max(len) per sample; empty vs empty is a perfect match (distance 0).
    return 1.0 - sum(d / max(lp, lg) if d else 0.0 for d, lp, lg in stats) / len(stats)


def one_minus_ned(
    predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False
) -> float:
    """Normalized edit distance score in the ICDAR 2019 form (higher is better):
    ``1 − mean_i ED(pred_i, gt_i) / max(len(pred_i), len(gt_i))``, with the empty-vs-empty
    term defined as 0. In [0, 1]."""
    return _ned_score(_char_stats(predictions, labels, alphanumeric))


def evaluate(
    predictions: Sequence[str], labels: Sequence[str], *, alphanumeric: bool = False
) -> dict[str, float]:
    """All metrics in one pass over the character edit distances.

    Returns ``samples`` (the count scored), ``empty_labels`` (those not scored: empty
    under the alphanumeric normalization), ``word_accuracy``, ``ed1_accuracy``, ``cer``,
    ``wer`` and ``one_minus_ned``; accuracies and rates are fractions, not percentages."""
    pairs = _pairs(predictions, labels, alphanumeric)
    stats = [(edit_distance(p, g), len(p), len(g)) for p, g in pairs]
    n = len(stats)
    return {
        "samples": n,
        "empty_labels": len(labels) - n,
        "word_accuracy": sum(p == g for p, g in pairs) / n,
        "ed1_accuracy": sum(d <= 1 for d, _, _ in stats) / n,
        "cer": _ratio(sum(d for d, _, _ in stats), sum(lg for _, _, lg in stats)),
        "wer": wer(predictions, labels, alphanumeric=alphanumeric),
        "one_minus_ned": _ned_score(stats),
    }
