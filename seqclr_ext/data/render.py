"""The built-in dataset: word images rendered from the machine's fonts and word lists.

DESIGN.md "Conventions": print fonts give *scene-like* text, handwriting fonts give
*handwriting-like* text, and whole font families are held out for evaluation. Everything
comes from Debian packages (:data:`APT_PACKAGES`; install line :data:`APT_INSTALL`):

==============  =====================================================  ===================
split           fonts (families)                                       words
==============  =====================================================  ===================
``scene-train`` DejaVu Sans / Serif / Sans Mono, Liberation Sans /     wamerican, 9/10
                Serif / Mono, FreeSans / FreeSerif / FreeMono
``scene-test``  Caladea, Open Sans, Inconsolata                        wamerican, 1/10
``hand-train``  Comic Neue, Kaushan Script, Breip, Femke Klaver,       wamerican, 9/10
                Kristi, Rufscript, Delphine, Ecolier court, Humor
                Sans*, Because We Build* / Connect* / Create* /
                Mentor* / Organize*, Purisa, Nanum Pen / Brush /
                Barun Pen, Seto, Klee One, Kiloji, Lobster, Lobster
                Two, Leckerli One, Havana, Un Pilgia
``hand-test``   Dancing Script, DKG handwriting, Steve Hand, Because   wamerican, 1/10
                We Learn*
==============  =====================================================  ===================

(* capitals-only designs: their text is rendered and labelled upper-case; they are drawn
with weight :data:`CAPS_ONLY_WEIGHT` against 1 for the other families, so about 8 % of
``hand-train`` and 9 % of ``hand-test`` is capitals-only.) The split is
fixed in :data:`FAMILIES` (train and test families are disjoint by construction), and so is
the vocabulary split: a word is a test word when ``crc32(word.lower()) % 10 == 0``.

Texts (:func:`sample_text`): 75 % dictionary words (lower / Title / UPPER case), 10 %
words with punctuation attached, 10 % numbers (prices, times, percentages, ...), 5 %
random strings over the whole charset; at most :data:`MAX_LENGTH` characters, no spaces.
A font lacking a glyph of the text is skipped for that sample (another font of the split
is drawn; counted in :class:`RenderStats`).

Images (:func:`render_sample`): greyscale PNG, height :data:`HEIGHT`, width following the
text; rendered at 40-72 px, cropped to the ink horizontally and to the cap-height /
baseline band vertically (so lower-case stays smaller than capitals), slightly rotated
and sheared, resized. Scene-like: any grey levels with contrast >= 70 (light-on-dark
too), flat or gradient background, light blur and noise. Handwriting-like: dark ink on
light paper, slant, a little noise.

Fonts are looked up under ``$SEQCLR_EXT_FONT_ROOT`` (default ``/usr/share/fonts``), word
lists under ``$SEQCLR_EXT_DICT_ROOT`` (default ``/usr/share/dict``); a missing file raises
``FileNotFoundError`` with the ``apt-get`` line. ``render --all`` writes
:data:`DEFAULT_SIZES` (about 4.5 KB per image: ~230 MB per 50 000-image split; ~200
images/s with 2 worker processes).

Every sample draws from its own generator seeded by ``(seed, split, index)``, so the
output depends on neither the worker count nor the chunking.
"""
from __future__ import annotations

import io
import multiprocessing
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from .charset import FRENCH_ACCENTS, PRINTABLE
from .lmdb_dataset import write_lmdb

__all__ = [
    "APT_INSTALL",
    "APT_PACKAGES",
    "CAPS_ONLY_WEIGHT",
    "DEFAULT_SIZES",
    "FAMILIES",
    "HEIGHT",
    "MAX_LENGTH",
    "RENDER_VERSION",
    "SPLITS",
    "FontFamily",
    "RenderStats",
    "check_fonts",
    "font_files",
    "load_words",
    "render_meta",
    "render_sample",
    "render_split",
    "sample_text",
]

HEIGHT = 32
#: Bumped whenever a change alters the rendered images: LMDBs record it (``meta``), and
#: data rendered by an older renderer is made again rather than reused.
RENDER_VERSION = 2
#: Relative weight of a capitals-only family when a font is drawn (other families: 1).
CAPS_ONLY_WEIGHT = 0.3
MAX_LENGTH = 25
FONT_ROOT = Path(os.environ.get("SEQCLR_EXT_FONT_ROOT", "/usr/share/fonts"))
DICT_ROOT = Path(os.environ.get("SEQCLR_EXT_DICT_ROOT", "/usr/share/dict"))
WORD_LISTS = {"en": ("wamerican", "american-english"), "fr": ("wfrench", "french")}


@dataclass(frozen=True)
class FontFamily:
    """One font family: its faces (paths under :data:`FONT_ROOT`), the Debian package that
    installs them, the style (``scene``/``hand``) and split (``train``/``test``) it serves,
    and whether it only has capitals (its texts are then upper-cased)."""

    name: str
    package: str
    files: tuple[str, ...]
    style: str
    split: str
    caps_only: bool = False


def _fam(name, package, files, style, split, caps_only=False):
    return FontFamily(name, package, tuple(files), style, split, caps_only)


_DV, _LB, _FF = "truetype/dejavu/", "truetype/liberation2/", "truetype/freefont/"
_OS = "truetype/open-sans/OpenSans-"
_BW = "opentype/bwht/BecauseWe"
FAMILIES: tuple[FontFamily, ...] = (
    # --- print fonts: scene-like text ---
    _fam("DejaVu Sans", "fonts-dejavu-core",
         [_DV + "DejaVuSans.ttf", _DV + "DejaVuSans-Bold.ttf"], "scene", "train"),
    _fam("DejaVu Serif", "fonts-dejavu-core",
         [_DV + "DejaVuSerif.ttf", _DV + "DejaVuSerif-Bold.ttf"], "scene", "train"),
    _fam("DejaVu Sans Mono", "fonts-dejavu-core",
         [_DV + "DejaVuSansMono.ttf", _DV + "DejaVuSansMono-Bold.ttf"], "scene", "train"),
    *(_fam(f"Liberation {kind}", "fonts-liberation2",
           [f"{_LB}Liberation{kind}-{face}.ttf"
            for face in ("Regular", "Bold", "Italic", "BoldItalic")], "scene", "train")
      for kind in ("Sans", "Serif", "Mono")),
    _fam("FreeSans", "fonts-freefont-ttf",
         [_FF + f"FreeSans{f}.ttf" for f in ("", "Bold", "Oblique", "BoldOblique")],
         "scene", "train"),
    _fam("FreeSerif", "fonts-freefont-ttf",
         [_FF + f"FreeSerif{f}.ttf" for f in ("", "Bold", "Italic", "BoldItalic")],
         "scene", "train"),
    _fam("FreeMono", "fonts-freefont-ttf",
         [_FF + f"FreeMono{f}.ttf" for f in ("", "Bold", "Oblique", "BoldOblique")],
         "scene", "train"),
    _fam("Caladea", "fonts-crosextra-caladea",
         [f"truetype/crosextra/Caladea-{f}.ttf"
          for f in ("Regular", "Bold", "Italic", "BoldItalic")], "scene", "test"),
    _fam("Open Sans", "fonts-open-sans",
         [_OS + f + ".ttf" for f in ("Regular", "Bold", "Italic", "BoldItalic", "Light",
                                     "Semibold", "ExtraBold", "CondBold", "CondLight")],
         "scene", "test"),
    _fam("Inconsolata", "fonts-inconsolata", ["truetype/inconsolata/Inconsolata.otf"],
         "scene", "test"),
    # --- handwriting fonts: handwriting-like text ---
    _fam("Comic Neue", "fonts-comic-neue",
         [f"opentype/comic-neue/ComicNeue-{f}.otf"
          for f in ("Regular", "Bold", "Italic", "Light", "BoldItalic", "LightItalic")],
         "hand", "train"),
    _fam("Kaushan Script", "fonts-kaushanscript",
         ["opentype/kaushanscript/KaushanScript-Regular.otf"], "hand", "train"),
    _fam("Breip", "fonts-breip",
         ["truetype/breip/Breip.ttf", "truetype/breip/breipfont.ttf"], "hand", "train"),
    _fam("Femke Klaver", "fonts-femkeklaver", ["truetype/femkeklaver/femkeklaver.ttf"],
         "hand", "train"),
    _fam("Kristi", "fonts-kristi", ["truetype/kristi/Kristi.ttf"], "hand", "train"),
    _fam("Rufscript", "fonts-rufscript", ["truetype/rufscript/Rufscript010.ttf"],
         "hand", "train"),
    _fam("Delphine", "fonts-sjfonts", ["truetype/sjfonts/Delphine.ttf"], "hand", "train"),
    _fam("Ecolier court", "fonts-ecolier-court",
         ["truetype/ecolier-court/Ecolier-court.ttf"], "hand", "train"),
    _fam("Humor Sans", "fonts-humor-sans", ["truetype/humor-sans/Humor-Sans.ttf"],
         "hand", "train", caps_only=True),
    *(_fam(f"Because We {w}", "fonts-bwht", [f"{_BW}{w}-Regular.otf"], "hand", "train",
           caps_only=True)
      for w in ("Build", "Connect", "Create", "Mentor", "Organize")),
    _fam("Purisa", "fonts-tlwg-purisa-ttf",
         [f"truetype/tlwg/Purisa{f}.ttf" for f in ("", "-Bold", "-Oblique", "-BoldOblique")],
         "hand", "train"),
    _fam("Nanum Pen", "fonts-nanum-extra", ["truetype/nanum/NanumPen.ttf"], "hand", "train"),
    _fam("Nanum Brush", "fonts-nanum-extra", ["truetype/nanum/NanumBrush.ttf"],
         "hand", "train"),
    _fam("Nanum Barun Pen", "fonts-nanum-extra",
         [f"truetype/nanum/NanumBarunpen{f}.ttf" for f in ("R", "B")], "hand", "train"),
    _fam("Seto", "fonts-seto", ["truetype/seto/setofont.ttf"], "hand", "train"),
    _fam("Klee One", "fonts-klee",
         [f"truetype/klee/KleeOne-{f}.ttf" for f in ("Regular", "SemiBold")], "hand", "train"),
    _fam("Kiloji", "fonts-kiloji",
         [f"truetype/kiloji/kiloji{f}.ttf" for f in ("", "_b", "_d", "_p")], "hand", "train"),
    _fam("Lobster", "fonts-lobster", ["opentype/lobster/lobster.otf"], "hand", "train"),
    _fam("Lobster Two", "fonts-lobstertwo",
         [f"opentype/lobstertwo/LobsterTwo-{f}.otf"
          for f in ("Regular", "Bold", "Italic", "BoldItalic")], "hand", "train"),
    _fam("Leckerli One", "fonts-leckerli-one",
         ["truetype/leckerli-one/LeckerliOne-Regular.ttf"], "hand", "train"),
    _fam("Havana", "fonts-havana", ["opentype/havana/Havana-Regular.otf"], "hand", "train"),
    _fam("Un Pilgia", "fonts-unfonts-extra", ["truetype/unfonts-extra/UnPilgia.ttf"],
         "hand", "train"),
    _fam("Dancing Script", "fonts-dancingscript",
         [f"opentype/dancingscript/DancingScript-{f}.otf" for f in ("Regular", "Bold")],
         "hand", "test"),
    _fam("DKG handwriting", "fonts-dkg-handwriting",
         [f"truetype/fifthhorseman/dkg{f}.ttf" for f in ("", "Bd", "It", "BI")],
         "hand", "test"),
    _fam("Steve Hand", "fonts-sjfonts", ["truetype/sjfonts/SteveHand.ttf"], "hand", "test"),
    _fam("Because We Learn", "fonts-bwht", [f"{_BW}Learn-Regular.otf"], "hand", "test",
         caps_only=True),
)

SPLITS = ("scene-train", "scene-test", "hand-train", "hand-test")
#: Sizes written by ``python -m seqclr_ext.data render --all``.
DEFAULT_SIZES = {"scene-train": 50_000, "scene-test": 2_000,
                 "hand-train": 50_000, "hand-test": 2_000}
APT_PACKAGES = tuple(sorted({f.package for f in FAMILIES} | {"wamerican", "wfrench"}))
APT_INSTALL = "apt-get install -y --no-install-recommends " + " ".join(APT_PACKAGES)


def _parse_split(split: str) -> tuple[str, str]:
    style, _, part = split.partition("-")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return style, part


def split_families(split: str) -> tuple[FontFamily, ...]:
    """The font families of a named split (e.g. ``"hand-test"``)."""
    style, part = _parse_split(split)
    return tuple(f for f in FAMILIES if f.style == style and f.split == part)


def font_files(split: str) -> list[Path]:
    """Absolute paths of every face of the split's families."""
    return [FONT_ROOT / p for fam in split_families(split) for p in fam.files]


def _missing_message(what: str, missing: Sequence[str], packages: Sequence[str]) -> str:
    return (f"the built-in dataset needs {what} that are not installed: "
            f"{', '.join(missing)}. Install the Debian packages with:\n  "
            f"{APT_INSTALL}\n(missing here: {' '.join(sorted(set(packages)))})")


def check_fonts(split: str) -> None:
    """Raise ``FileNotFoundError`` naming the ``apt-get`` command when a font file of the
    split is missing."""
    missing, packages = [], []
    for fam in split_families(split):
        for p in fam.files:
            if not (FONT_ROOT / p).is_file():
                missing.append(str(FONT_ROOT / p))
                packages.append(fam.package)
    if missing:
        raise FileNotFoundError(_missing_message("font files", missing, packages))


@lru_cache(maxsize=None)
def load_words(language: str = "en", part: str = "train") -> tuple[str, ...]:
    """The word list of ``language`` (``en``: wamerican, ``fr``: wfrench), filtered to the
    charset (printable ASCII, plus the French accents for ``fr``), at most
    :data:`MAX_LENGTH` characters, no spaces, possessives (``'s``) dropped; ``part``
    ``train`` keeps 9/10 of the words, ``test`` the other tenth (by a hash of the
    lower-cased word)."""
    if language not in WORD_LISTS:
        raise ValueError(f"unknown language {language!r}; expected one of {list(WORD_LISTS)}")
    package, name = WORD_LISTS[language]
    path = DICT_ROOT / name
    if not path.is_file():
        raise FileNotFoundError(_missing_message("word lists", [str(path)], [package]))
    allowed = set(PRINTABLE) - {" "}
    if language == "fr":
        allowed |= set(FRENCH_ACCENTS)
    want_test = part == "test"
    words = []
    for w in path.read_text(encoding="utf-8").splitlines():
        w = w.strip()
        if (not w or len(w) > MAX_LENGTH or w.endswith("'s") or not set(w) <= allowed):
            continue
        if (zlib.crc32(w.lower().encode()) % 10 == 0) == want_test:
            words.append(w)
    return tuple(words)


# ---------------------------------------------------------------------------- texts

_PUNCT_AFTER = ".,;:!?'\")]-"
_PUNCT_BEFORE = "\"'([#@$*-"
_SYMBOLS = "".join(c for c in PRINTABLE if not c.isalnum() and c != " ")


def _case(word: str, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.5:
        return word.lower()
    if r < 0.8:
        return word[:1].upper() + word[1:].lower()
    return word.upper()


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi))


# Number-like strings: prices, times, percentages, thousands, dates, tags, phone numbers.
_NUMBER_FORMS = (
    lambda n, r: f"${n / 100:.2f}",
    lambda n, r: f"{_int(r, 0, 24)}:{_int(r, 0, 60):02d}",
    lambda n, r: f"{n % 101}%",
    lambda n, r: f"{n:,}",
    lambda n, r: f"{_int(r, 1, 32)}/{_int(r, 1, 13)}/{_int(r, 0, 100):02d}",
    lambda n, r: f"#{n}",
    lambda n, r: f"({_int(r, 100, 1000)}){_int(r, 100, 1000)}-{n % 10000:04d}",
    lambda n, r: str(n),
)


def _number(rng: np.random.Generator) -> str:
    n = _int(rng, 0, 10 ** _int(rng, 1, 7))
    return _NUMBER_FORMS[_int(rng, 0, len(_NUMBER_FORMS))](n, rng)


def sample_text(rng: np.random.Generator, words: Sequence[str], *,
                alphabet: str = PRINTABLE) -> str:
    """One text to render: a cased dictionary word (75 %), a word with punctuation (10 %),
    a number-like string (10 %) or a random string over ``alphabet`` without the space
    (5 %); never longer than :data:`MAX_LENGTH`."""
    r = rng.random()
    if r < 0.75:
        text = _case(words[int(rng.integers(len(words)))], rng)
    elif r < 0.85:
        text = _case(words[int(rng.integers(len(words)))], rng)
        kind = int(rng.integers(0, 4))
        if kind == 0:
            text += _PUNCT_AFTER[int(rng.integers(len(_PUNCT_AFTER)))]
        elif kind == 1:
            text = _PUNCT_BEFORE[int(rng.integers(len(_PUNCT_BEFORE)))] + text
        elif kind == 2:
            q = ['""', "''", "()", "[]", "{}", "<>"][int(rng.integers(6))]
            text = q[0] + text + q[1]
        else:
            other = _case(words[int(rng.integers(len(words)))], rng)
            text = text + "-" + other
    elif r < 0.95:
        text = _number(rng)
    else:
        chars = [c for c in alphabet if c != " "]
        text = "".join(chars[int(i)] for i in rng.integers(0, len(chars),
                                                           int(rng.integers(1, 11))))
    return text[:MAX_LENGTH]


# ---------------------------------------------------------------------------- fonts

@lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # The basic layout engine: no dependency on libraqm/fribidi, the same everywhere.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=None)
def _coverage(path: str) -> frozenset[str]:
    """Characters of the printable + French set the font has a real glyph for: a glyph
    identical to the one of an unassigned code point is the font's .notdef box, and an
    empty glyph is no glyph at all (Pillow has no direct cmap query)."""
    font = _font(path, 32)

    def sig(ch):
        m = font.getmask(ch)
        return m.size, bytes(m)

    notdef = {sig("\U0010FFFD"), sig("\uE0FF")}
    have = {" "}
    for ch in (PRINTABLE + FRENCH_ACCENTS).replace(" ", ""):
        s = sig(ch)
        if s[0][0] > 0 and s[0][1] > 0 and s not in notdef:
            have.add(ch)
    return frozenset(have)


def _pick_font(rng: np.random.Generator, families: Sequence[FontFamily],
               text: str) -> tuple[FontFamily | None, str, str, int]:
    """A family and a face (uniform within the family) whose glyphs cover the text.
    Families are drawn in a random order, capitals-only ones with weight
    :data:`CAPS_ONLY_WEIGHT` (so that most texts keep their case), the rest with weight 1;
    faces lacking a glyph are skipped. Returns (family, face path, text as rendered,
    number of skipped choices)."""
    weights = np.array([CAPS_ONLY_WEIGHT if f.caps_only else 1.0 for f in families])
    order = rng.choice(len(families), size=len(families), replace=False,
                       p=weights / weights.sum())
    skipped = 0
    for k in order:
        fam = families[int(k)]
        t = text.upper() if fam.caps_only else text
        faces = [FONT_ROOT / p for p in fam.files]
        for j in rng.permutation(len(faces)):
            path = str(faces[int(j)])
            if set(t) <= _coverage(path):
                return fam, path, t, skipped
            skipped += 1
    return None, "", text, skipped


# ---------------------------------------------------------------------------- images

def _draw_text_mask(text: str, font: ImageFont.FreeTypeFont, stroke: int) -> tuple[
        Image.Image, int, int]:
    """Ink mask (L, 255 = ink) of the text drawn on its baseline, with the y of the
    cap-height line and of the baseline."""
    left, top, right, bottom = font.getbbox(text, anchor="ls", stroke_width=stroke)
    cap_top = min(font.getbbox("H", anchor="ls")[1], font.getbbox("d", anchor="ls")[1])
    pad = font.size // 2 + stroke
    top_all = min(top, cap_top)
    w = right - left + 2 * pad
    h = max(bottom, 0) - top_all + 2 * pad
    x0, y0 = pad - left, pad - top_all  # baseline origin inside the canvas
    mask = Image.new("L", (max(w, 1), max(h, 1)), 0)
    ImageDraw.Draw(mask).text((x0, y0), text, font=font, fill=255, anchor="ls",
                              stroke_width=stroke, stroke_fill=255)
    return mask, y0 + cap_top, y0


def _thin(mask: Image.Image) -> Image.Image:
    """The ink eroded by one pixel, unless that would remove most of it (hairline fonts)."""
    thin = mask.filter(ImageFilter.MinFilter(3))
    ink = np.asarray(mask, dtype=np.float32).sum()
    return thin if np.asarray(thin, dtype=np.float32).sum() > 0.5 * ink else mask


def _warp(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A smooth random warp of the word: piecewise-bilinear over vertical strips about
    half a text height wide, whose edges move sideways (letters of varying width) and
    up and down along a slow wave (a wandering baseline, varying letter height)."""
    w, h = mask.size
    n = max(2, round(2 * w / h))
    xs = np.linspace(0.0, w, n + 1)
    src_x = xs + rng.uniform(-0.3, 0.3, n + 1) * (w / n)
    src_x[0], src_x[-1] = 0.0, w
    src_x = np.maximum.accumulate(src_x)  # keeps the strips in reading order
    t = xs / w * 2 * np.pi * rng.uniform(0.3, 1.5) + rng.uniform(0, 2 * np.pi)
    top = rng.uniform(0, 0.05) * h * np.sin(t)
    bottom = top + rng.uniform(-0.04, 0.04) * h * np.cos(t)
    mesh = [((round(xs[i]), 0, round(xs[i + 1]), h),
             (src_x[i], top[i], src_x[i], h + bottom[i],
              src_x[i + 1], h + bottom[i + 1], src_x[i + 1], top[i + 1]))
            for i in range(n)]
    return mask.transform((w, h), Image.Transform.MESH, mesh,
                          resample=Image.Resampling.BILINEAR)


def _affine(mask: Image.Image, angle: float, shear: float) -> Image.Image:
    """Shear (x += shear * (y_c - y)) then rotate by ``angle`` degrees, canvas expanded."""
    if shear:
        w, h = mask.size
        extra = int(abs(shear) * h) + 1
        new_w = w + extra
        # Output (x, y) samples input (x - shear * (h/2 - y) - extra/2 + ..., y).
        a, b = 1.0, shear
        c = -shear * h / 2 - extra / 2
        mask = mask.transform((new_w, h), Image.Transform.AFFINE, (a, b, c, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    return mask


def render_sample(rng: np.random.Generator, text: str, font_path: str, style: str,
                  ) -> Image.Image:
    """Render ``text`` in one font as a greyscale image of height :data:`HEIGHT`."""
    hand = style == "hand"
    size = int(rng.integers(40, 73))
    font = _font(font_path, size)
    # Handwriting varies in pen width and in shape from writer to writer: the stroke is
    # thickened or thinned and the word smoothly warped, so that unseen hands are not
    # just unseen fonts (hand-test word accuracy 26.6 % -> 33.4 % with them and the added
    # families, python/RESULTS.md).
    stroke = int(rng.choice(3, p=(0.55, 0.3, 0.15))) if hand else 0
    mask, cap_y, base_y = _draw_text_mask(text, font, stroke)
    if hand:
        if stroke == 0 and rng.random() < 0.25:
            mask = _thin(mask)
        mask = _warp(mask, rng)

    # Crop: the ink horizontally, the cap-height..baseline band (and any ink outside it)
    # vertically, then random margins.
    bbox = mask.getbbox() or (0, 0, mask.width, mask.height)
    top, bottom = min(bbox[1], cap_y), max(bbox[3], base_y)
    band = bottom - top
    mx = [int(rng.uniform(0.03, 0.3) * band) for _ in range(2)]
    my = [int(rng.uniform(0.02, 0.18) * band) for _ in range(2)]
    mask = mask.crop((bbox[0] - mx[0], top - my[0], bbox[2] + mx[1], bottom + my[1]))

    angle = float(rng.normal(0, 1.5 if hand else 2.0))
    angle = max(-5.0, min(5.0, angle))
    shear = float(rng.uniform(-0.25, 0.25) if hand else rng.uniform(-0.15, 0.15))
    mask = _affine(mask, angle, shear)
    if abs(angle) > 0.5:  # the rotation grows the canvas: trim what it added vertically
        bb = mask.getbbox()
        if bb:
            extra = int(abs(np.sin(np.radians(angle))) * mask.width / 2 * 0.8)
            t = min(bb[1], extra)
            b = max(bb[3], mask.height - extra)
            mask = mask.crop((0, t, mask.width, b))

    width = max(4, round(mask.width * HEIGHT / mask.height))
    mask = mask.resize((width, HEIGHT), Image.Resampling.LANCZOS, reducing_gap=3.0)
    m = np.asarray(mask, dtype=np.float32) / 255.0

    # Colours.
    if hand:
        bg0 = rng.uniform(195, 255)
        fg = rng.uniform(0, 90)
        bg = np.full_like(m, bg0)
    else:
        while True:
            bg0, fg = rng.uniform(0, 255, 2)
            if abs(bg0 - fg) >= 70:
                break
        bg = np.full_like(m, bg0)
        if rng.random() < 0.4:  # a linear gradient across the background
            amp = rng.uniform(-40, 40)
            ramp = np.linspace(-0.5, 0.5, width, dtype=np.float32)
            if rng.random() < 0.5:
                bg = bg + amp * ramp[None, :]
            else:
                bg = bg + amp * np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[:, None]
    out = bg * (1.0 - m) + fg * m

    # Degradations: light for handwriting, a little stronger for scene-like text.
    noise = rng.uniform(0, 4 if hand else 10)
    out = out + rng.normal(0.0, 1.0, out.shape).astype(np.float32) * noise
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="L")
    blur = rng.uniform(0, 0.6 if hand else 1.1)
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return img


# ---------------------------------------------------------------------------- splits

@dataclass
class RenderStats:
    """Outcome of :func:`render_split`: samples written, font choices skipped because
    the font lacked a glyph of the text, texts re-drawn because no font of the split had
    all their glyphs, and samples per font family."""

    written: int = 0
    font_skips: int = 0
    redrawn_texts: int = 0
    per_family: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        fams = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_family.items()))
        return (f"{self.written} written; {self.font_skips} font choices skipped for "
                f"missing glyphs; {self.redrawn_texts} texts redrawn; per family: {fams}")


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def make_sample(split: str, index: int, seed: int, languages: tuple[str, ...] = ("en",),
                ) -> tuple[bytes, str, str, int, int]:
    """Sample ``index`` of ``split``: (PNG bytes, label, family name, font skips, texts
    redrawn). A pure function of its arguments."""
    style, part = _parse_split(split)
    families = split_families(split)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _split_key(split), index]))
    word_lists = [load_words(lang, part) for lang in languages]
    alphabet = PRINTABLE + (FRENCH_ACCENTS if "fr" in languages else "")
    skips = redrawn = 0
    while True:
        words = word_lists[int(rng.integers(len(word_lists)))]
        text = sample_text(rng, words, alphabet=alphabet)
        fam, path, text, s = _pick_font(rng, families, text)
        skips += s
        if fam is not None:
            break
        redrawn += 1
    img = render_sample(rng, text, path, style)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue(), text, fam.name, skips, redrawn


def _render_chunk(args):
    split, start, stop, seed, languages = args
    return [make_sample(split, i, seed, languages) for i in range(start, stop)]


def _chunks(split, num, seed, languages, chunk_size):
    for start in range(0, num, chunk_size):
        yield split, start, min(num, start + chunk_size), seed, languages


def iter_samples(split: str, num_samples: int, seed: int = 0, workers: int = 1, *,
                 languages: Sequence[str] = ("en",), chunk_size: int = 64,
                 progress: bool = True, stats: RenderStats | None = None,
                 ) -> Iterator[tuple[bytes, str]]:
    """Yield ``(png_bytes, label)`` for samples ``0..num_samples-1`` of ``split``, in
    order, rendered by ``workers`` processes (``1``: in this process)."""
    check_fonts(split)
    languages = tuple(languages)
    for lang in languages:  # fail early, in the parent, on a missing word list
        load_words(lang, _parse_split(split)[1])
    stats = stats if stats is not None else RenderStats()
    jobs = _chunks(split, num_samples, seed, languages, chunk_size)
    bar = tqdm(total=num_samples, desc=f"render {split}", unit="img", disable=not progress)
    pool = None
    try:
        if workers > 1:
            pool = multiprocessing.get_context().Pool(workers)
            results = pool.imap(_render_chunk, jobs)
        else:
            results = map(_render_chunk, jobs)
        for chunk in results:
            for png, label, family, skips, redrawn in chunk:
                stats.written += 1
                stats.font_skips += skips
                stats.redrawn_texts += redrawn
                stats.per_family[family] += 1
                yield png, label
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def render_split(split: str, out_path: str | os.PathLike, num_samples: int, seed: int = 0,
                 workers: int = 1, *, languages: Sequence[str] = ("en",),
                 overwrite: bool = False, progress: bool = True) -> RenderStats:
    """Render ``num_samples`` images of ``split`` (one of :data:`SPLITS`) into a new LMDB
    at ``out_path`` (deep-text-recognition-benchmark layout, PNG images) with ``workers``
    processes; the same ``seed`` gives the same bytes whatever ``workers``."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_fonts(split)  # before anything is written
    stats = RenderStats()
    write_lmdb(out_path, iter_samples(split, num_samples, seed, workers,
                                      languages=languages, progress=progress, stats=stats),
               overwrite=overwrite, meta=render_meta(split, num_samples, seed, languages))
    return stats


def render_meta(split: str, num_samples: int, seed: int = 0,
                languages: Sequence[str] = ("en",)) -> dict:
    """What :func:`render_split` records in its LMDB (``meta``): equal for equal images."""
    return {"renderer": RENDER_VERSION, "split": split, "num_samples": num_samples,
            "seed": seed, "languages": list(languages)}
