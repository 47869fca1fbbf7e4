"""Data: character sets, LMDB datasets (deep-text-recognition-benchmark layout)."""
from .charset import ALPHANUMERIC, BLANK, FRENCH_ACCENTS, PRINTABLE, Charset, ctc_greedy_collapse
from .lmdb_dataset import ConvertStats, DatasetStats, LmdbDataset, convert_folder, write_lmdb

__all__ = [
    "ALPHANUMERIC",
    "BLANK",
    "FRENCH_ACCENTS",
    "PRINTABLE",
    "Charset",
    "ctc_greedy_collapse",
    "ConvertStats",
    "DatasetStats",
    "LmdbDataset",
    "convert_folder",
    "write_lmdb",
]
