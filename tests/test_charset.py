"""seqclr_ext.data.charset: the seeds' symbol sets and 0-based label coding."""
import string

import pytest
import torch

from seqclr_ext.data import Charset


def test_printable_is_the_seeds_95_symbols():
    cs = Charset.printable()
    assert len(cs) == 95
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
    assert ids == [cs.symbols.index(c) for c in "Hi 42!"]  # 0-based, nothing reserved
    assert cs.encode("0") == [0] and cs.decode([94]) == cs.symbols[-1]
    assert cs.decode(ids) == "Hi 42!" and cs.decode(torch.tensor(ids)) == "Hi 42!"
    with pytest.raises(ValueError, match="é"):
        cs.encode("café")
    with pytest.raises(ValueError, match="out of range"):
        cs.decode([95])


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


def test_decoders_own_special_tokens():
    """Charset indices go into the decoders unchanged; greedy decoding gives them back."""
    from seqclr_ext.models import CTCDecoder

    cs = Charset("ab")
    ctc = CTCDecoder(4, len(cs))
    # Raw classes: 0 = blank, charset index c -> c + 1. Path "a a _ a b" -> "aab".
    path = torch.tensor([1, 1, 0, 1, 2])
    logits = torch.nn.functional.one_hot(path, ctc.num_classes).float()[None]
    assert cs.decode(ctc.greedy_decode(logits)[0]) == "aab"
