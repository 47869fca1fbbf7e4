"""Character sets and label <-> index coding.

SeqCLR (appendix A) uses 95 symbol classes for English — the printable ASCII characters:
52 case-sensitive letters, 10 digits, 33 punctuation marks and space — plus the French
accented letters for RIMES. The scene-text benchmarks are also scored on the 36-symbol
case-insensitive alphanumeric set.

One index convention throughout the package: symbol k of the set has index k (0-based, no
reserved values). The decoders own their special tokens (CTC blank, attention [GO] / [s])
and shift these indices internally (``seqclr_ext.models.decoders``).
"""
from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

__all__ = ["PRINTABLE", "FRENCH_ACCENTS", "ALPHANUMERIC", "Charset"]

# string.printable minus the whitespace other than " " (\t \n \r \x0b \x0c): 94 + space.
PRINTABLE = "".join(c for c in string.printable if c == " " or not c.isspace())
FRENCH_ACCENTS = "àâäæçéèêëîïôöœùûüÿÀÂÄÆÇÉÈÊËÎÏÔÖŒÙÛÜŸ"
ALPHANUMERIC = string.digits + string.ascii_lowercase


class Charset:
    """An ordered set of single-character symbols, indexed 0 .. len - 1.

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
        self._index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def printable(cls, *, french: bool = False) -> Charset:
        """The seeds' 95 printable ASCII symbols, plus the French accented letters."""
        return cls(PRINTABLE + (FRENCH_ACCENTS if french else ""))

    @classmethod
    def alphanumeric(cls) -> Charset:
        """The 36-symbol case-insensitive set ``[0-9a-z]``."""
        return cls(ALPHANUMERIC, case_insensitive=True)

    def __len__(self) -> int:
        """Number of symbols (the recognizer's ``num_chars``)."""
        return len(self.symbols)

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
        """Label → symbol indices (0-based). Raises ``ValueError`` naming
        the characters outside the charset."""
        label = self.normalize(label)
        try:
            return [self._index[c] for c in label]
        except KeyError:
            raise ValueError(
                f"label {label!r} has characters outside the charset: {self.unknown(label)!r}"
            ) from None

    def decode(self, indices: Sequence[int]) -> str:
        """Symbol indices (list, 1-D tensor or array) → string."""
        indices = indices.tolist() if hasattr(indices, "tolist") else list(indices)
        bad = [i for i in indices if not 0 <= i < len(self.symbols)]
        if bad:
            raise ValueError(f"indices out of range [0, {len(self.symbols) - 1}]: {bad}")
        return "".join(self.symbols[i] for i in indices)
