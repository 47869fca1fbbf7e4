"""Data: character sets, LMDB datasets (deep-text-recognition-benchmark layout)."""
from .batching import (Batch, RecognitionCollate, ResumableBatchSampler, label_subset,
                       load_or_make_subset)
from .charset import ALPHANUMERIC, FRENCH_ACCENTS, PRINTABLE, Charset
from .convert import ConvertStats, convert_folder
from .lmdb_dataset import DatasetStats, LmdbDataset, read_meta, write_lmdb
from .render import RenderStats, render_meta, render_split

__all__ = [
    "ALPHANUMERIC",
    "FRENCH_ACCENTS",
    "PRINTABLE",
    "Charset",
    "Batch",
    "RecognitionCollate",
    "ResumableBatchSampler",
    "label_subset",
    "load_or_make_subset",
    "ConvertStats",
    "DatasetStats",
    "LmdbDataset",
    "convert_folder",
    "read_meta",
    "write_lmdb",
    "RenderStats",
    "render_meta",
    "render_split",
]
