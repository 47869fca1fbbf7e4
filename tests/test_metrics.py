"""seqclr_ext.metrics: hand-computed cases and edit-distance properties."""
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqclr_ext.metrics import (
    cer,
    ed1_accuracy,
    edit_distance,
    evaluate,
    one_minus_ned,
    to_alphanumeric,
    wer,
    word_accuracy,
)


@pytest.mark.parametrize(
    "a, b, d",
    [
        ("kitten", "sitting", 3),
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("abc", "abc", 0),
        ("flaw", "lawn", 2),
        ("abc", "acb", 2),  # a transposition is two edits in Levenshtein
        ("aaaa", "aa", 2),
        (["the", "cat"], ["a", "cat"], 1),  # word sequences
    ],
)
def test_edit_distance_cases(a, b, d):
    assert edit_distance(a, b) == d


def test_word_and_ed1_accuracy():
    labels = ["hello", "world", "abc", "", "x"]
    preds = ["hello", "word", "xyz", "", "xy"]  # exact, 1 edit, 3 edits, empty match, 1 edit
    assert word_accuracy(preds, labels) == pytest.approx(2 / 5)
    assert ed1_accuracy(preds, labels) == pytest.approx(4 / 5)
    # ED1 boundary: exactly 1 is in, exactly 2 is out.
    assert ed1_accuracy(["ab"], ["abc"]) == 1.0
    assert ed1_accuracy(["a"], ["abc"]) == 0.0


def test_cer_is_a_corpus_total():
    # 3 edits over 7 label chars + 0 over 3: 3/10, not the mean of per-sample rates.
    assert cer(["kitten", "abc"], ["sitting", "abc"]) == pytest.approx(3 / 10)
    assert cer([""], [""]) == 0.0
    assert cer(["a"], [""]) == float("inf")


def test_wer():
    preds = ["the cat sat", "hello"]
    labels = ["the hat sat down", "hello world"]
    # sample 1: 1 substitution + 1 deletion over 4 words; sample 2: 1 deletion over 2.
    assert wer(preds, labels) == pytest.approx(3 / 6)
    assert wer(["a  b"], ["a b"]) == 0.0  # whitespace runs are one separator


def test_one_minus_ned():
    # kitten/sitting: 3 / 7; "" vs "": defined as 0; "ab" vs "": 2 / 2.
    score = one_minus_ned(["kitten", "", "ab"], ["sitting", "", ""])
    assert score == pytest.approx(1 - (3 / 7 + 0 + 1) / 3)
    assert one_minus_ned([""], [""]) == 1.0


def test_alphanumeric_option():
    assert to_alphanumeric("Hello, World! 42") == "helloworld42"
    preds, labels = ["HELLO!", "It's"], ["hello", "its"]
    assert word_accuracy(preds, labels) == 0.0
    assert word_accuracy(preds, labels, alphanumeric=True) == 1.0
    assert cer(["Café"], ["cafe"], alphanumeric=True) == pytest.approx(1 / 4)  # é dropped
    # WER normalizes word by word and drops words left empty.
    assert wer(["Hello , World"], ["hello world"], alphanumeric=True) == 0.0


def test_evaluate_matches_individual_metrics():
    preds = ["Kitten", "the cat", "", "abc!"]
    labels = ["sitting", "the hat", "", "ABC"]
    for alnum in (False, True):
        r = evaluate(preds, labels, alphanumeric=alnum)
        # Under the protocol the empty label has nothing to read: counted, not scored.
        assert (r["samples"], r["empty_labels"]) == ((3, 1) if alnum else (4, 0))
        for name, fn in [("word_accuracy", word_accuracy), ("ed1_accuracy", ed1_accuracy),
                         ("cer", cer), ("wer", wer), ("one_minus_ned", one_minus_ned)]:
            assert r[name] == pytest.approx(fn(preds, labels, alphanumeric=alnum)), name
    assert evaluate(preds, labels, alphanumeric=True)["word_accuracy"] == pytest.approx(1 / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="length"):
        evaluate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no samples"):
        cer([], [])


@lru_cache(maxsize=None)
def _naive(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(_naive(a[1:], b) + 1, _naive(a, b[1:]) + 1, _naive(a[1:], b[1:]) + (a[0] != b[0]))


texts = st.text(alphabet="abc", max_size=7)


@settings(max_examples=200, deadline=None)
@given(texts, texts, texts)
def test_edit_distance_properties(a, b, c):
    d = edit_distance(a, b)
    assert d == _naive(a, b)
    assert d == edit_distance(b, a)
    assert edit_distance(a, a) == 0
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert edit_distance(a, c) <= d + edit_distance(b, c)


def _word_levenshtein(a: list[str], b: list[str]) -> int:
    # Independent oracle: the textbook full-matrix DP over word lists.
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]


lines = st.lists(st.sampled_from(["a", "B", "b.", "!!", "c"]), max_size=4).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(lines, lines), min_size=1, max_size=4), st.booleans())
def test_wer_is_summed_word_levenshtein_over_summed_reference_words(pairs, alphanumeric):
    norm = (lambda t: [w for w in (to_alphanumeric(x) for x in t.split()) if w]) if alphanumeric \
        else str.split
    preds, labels = [p for p, _ in pairs], [g for _, g in pairs]
    scored = [(p, g) for p, g in pairs if not alphanumeric or norm(g)]  # empty: not scored
    if not scored:
        with pytest.raises(ValueError, match="no samples"):
            wer(preds, labels, alphanumeric=alphanumeric)
        return
    errors = sum(_word_levenshtein(norm(p), norm(g)) for p, g in scored)
    total = sum(len(norm(g)) for _, g in scored)
    got = wer(preds, labels, alphanumeric=alphanumeric)
    assert got == (pytest.approx(errors / total) if total else 0.0 if not errors else float("inf"))
