"""Character sets and label <-> index coding.

SeqCLR (appendix A) uses 95 symbol classes for English — the printable ASCII characters:
52 case-sensitive letters, 10 digits, 33 punctuation marks and space — plus the French
accented letters for RIMES, and one extra "[blank]" class for CTC. The scene-text
benchmarks are also scored on the 36-symbol case-insensitive alphanumeric set.

Index 0 is reserved for the CTC blank (and doubles as padding); symbol k of the set has
index k + 1, so a classifier over a charset has ``num_classes = len(charset) + 1`` outputs.
"""
from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

__all__ = [
    "BLANK",
    "PRINTABLE",
    "FRENCH_ACCENTS",
    "ALPHANUMERIC",
    "Charset",
    "ctc_greedy_collapse",
]

BLANK = 0

# string.printable minus the whitespace other than " " (\t \n \r \x0b \x0c): 94 + space.
PRINTABLE = "".join(c for c in string.printable if c == " " or not c.isspace())
FRENCH_ACCENTS = "àâäæçéèêëîïôöœùûüÿÀÂÄÆÇÉÈÊËÎÏÔÖŒÙÛÜŸ"
ALPHANUMERIC = string.digits + string.ascii_lowercase


class Charset:
    """An ordered set of single-character symbols with a reserved blank index 0.

    ``case_insensitive`` charsets lower-case every label before checking or encoding it
    (so "Hello" is in the alphanumeric set, and encodes as "hello"); their symbols must
    then be lower-case themselves.
    """

    def __init__(self, symbols: Iterable[str], *, case_insensitive: bool = False) -> None:
        symbols = list(symbols)
        if any(len(s) != 1 for s in symbols):
            raise ValueError("every symbol must be a single character")
        if len(set(symbols)) != len(symbols):
            dupes = sorted({s for s in symbols if symbols.count(s) > 1})
            raise ValueError(f"duplicate symbols: {dupes}")
        if case_insensitive and any(s != s.lower() for s in symbols):
            raise ValueError("a case-insensitive charset cannot hold upper-case symbols")
        self.symbols = "".join(symbols)
        self.case_insensitive = case_insensitive
        self._index = {s: i + 1 for i, s in enumerate(self.symbols)}

    @classmethod
    def printable(cls, *, french: bool = False) -> Charset:
        """The seeds' 95 printable ASCII symbols, plus the French accented letters."""
        return cls(PRINTABLE + (FRENCH_ACCENTS if french else ""))

    @classmethod
    def alphanumeric(cls) -> Charset:
        """The 36-symbol case-insensitive set ``[0-9a-z]``."""
        return cls(ALPHANUMERIC, case_insensitive=True)

    def __len__(self) -> int:
        """Number of symbols, blank excluded."""
        return len(self.symbols)

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs: the symbols plus the blank."""
        return len(self.symbols) + 1

    def __repr__(self) -> str:
        return f"Charset({self.symbols!r}, case_insensitive={self.case_insensitive})"

    def normalize(self, label: str) -> str:
        """The label as this charset sees it (lower-cased when case-insensitive)."""
        return label.lower() if self.case_insensitive else label

    def unknown(self, label: str) -> str:
        """The characters of the (normalized) label outside the charset, each once, in
        order of first appearance; empty when the label is fully covered."""
        return "".join(dict.fromkeys(c for c in self.normalize(label) if c not in self._index))

    def contains(self, label: str) -> bool:
        """Whether every character of the (normalized) label is in the charset."""
        return all(c in self._index for c in self.normalize(label))

    def encode(self, label: str) -> list[int]:
        """Label → symbol indices (1-based; 0 is the blank). Raises ``ValueError`` naming
        the characters outside the charset."""
        label = self.normalize(label)
        try:
            return [self._index[c] for c in label]
        except KeyError:
            raise ValueError(
                f"label {label!r} has characters outside the charset: {self.unknown(label)!r}"
            ) from None

    def decode(self, indices: Sequence[int]) -> str:
        """Symbol indices → string; blanks (index 0, also the padding) are skipped."""
        indices = _as_list(indices)
        bad = [i for i in indices if not 0 <= i <= len(self.symbols)]
        if bad:
            raise ValueError(f"indices out of range [0, {len(self.symbols)}]: {bad}")
        return "".join(self.symbols[i - 1] for i in indices if i != BLANK)

    def decode_ctc(self, indices: Sequence[int]) -> str:
        """Greedy CTC decoding of a per-frame argmax path: collapse repeats, drop blanks."""
        return self.decode(ctc_greedy_collapse(indices))


def _as_list(indices: Sequence[int]) -> list[int]:
    # Tensors and arrays iterate as 0-d objects; tolist() gives plain ints in one call.
    return indices.tolist() if hasattr(indices, "tolist") else list(indices)


def ctc_greedy_collapse(indices: Sequence[int], blank: int = BLANK) -> list[int]:
    """CTC best-path collapse of a frame-wise index sequence (list, 1-D tensor or array):
    merge runs of equal indices, then remove blanks — ``[1, 1, 0, 1, 2, 2] → [1, 1, 2]``
    (a blank between two equal symbols keeps both)."""
    out: list[int] = []
    prev = None
    for i in _as_list(indices):
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out
