"""seqclr_ext.data.charset: the seeds' symbol sets, coding and CTC collapse."""
import string

import pytest
import torch

from seqclr_ext.data import BLANK, Charset, ctc_greedy_collapse


def test_printable_is_the_seeds_95_symbols():
    cs = Charset.printable()
    assert len(cs) == 95 and cs.num_classes == 96
    assert sum(c.isalpha() for c in cs.symbols) == 52
    assert sum(c.isdigit() for c in cs.symbols) == 10
    assert sum(c in string.punctuation for c in cs.symbols) == 32 and " " in cs.symbols
    assert not any(c in cs.symbols for c in "\t\n\r\x0b\x0c")
    french = Charset.printable(french=True)
    assert french.contains("Élève à l'été") and not cs.contains("Élève")
    assert french.symbols.startswith(cs.symbols)  # indices of the ASCII symbols unchanged


def test_encode_decode_round_trip():
    cs = Charset.printable()
    ids = cs.encode("Hi 42!")
    assert BLANK not in ids and all(1 <= i < cs.num_classes for i in ids)
    assert cs.decode(ids) == "Hi 42!"
    assert cs.decode([0] + ids + [0, 0]) == "Hi 42!"  # blank doubles as padding
    with pytest.raises(ValueError, match="é"):
        cs.encode("café")
    with pytest.raises(ValueError, match="out of range"):
        cs.decode([96])


def test_unknown_and_contains():
    cs = Charset.printable()
    assert cs.unknown("naïve façade ïï") == "ïç"
    assert cs.unknown("plain") == "" and cs.contains("plain")


def test_alphanumeric_is_case_insensitive():
    cs = Charset.alphanumeric()
    assert len(cs) == 36
    assert cs.contains("Hello42") and cs.encode("AB") == cs.encode("ab")
    assert cs.decode(cs.encode("AbC")) == "abc"
    assert not cs.contains("don't") and cs.unknown("don't") == "'"
    with pytest.raises(ValueError, match="upper-case"):
        Charset("aB", case_insensitive=True)
    with pytest.raises(ValueError, match="duplicate"):
        Charset("abca")


def test_ctc_greedy_collapse():
    assert ctc_greedy_collapse([1, 1, 0, 1, 2, 2, 0, 0, 3]) == [1, 1, 2, 3]
    assert ctc_greedy_collapse([]) == [] and ctc_greedy_collapse([0, 0]) == []
    cs = Charset("ab")
    path = torch.tensor([0, 1, 1, 0, 1, 2, 0])
    assert cs.decode_ctc(path) == "aab"
