"""A corpus: its text, the works it is made of, and its token ids.

§3.1 step 1 in code: collect a corpus (``load_text`` for any UTF-8 file,
``shakespeare.load_shakespeare`` for the default one), clean it
(``normalize_whitespace``), tokenize it once (``encode_corpus``, cached on disk
because encoding megabytes of text with BPE takes a while) and hold out its
end for validation (``train_val_split``).  Cutting the ids into fixed-length
blocks is batches.py's job.

A ``Corpus`` is saved as two plain files, ``<name>.txt`` (the text) and
``<name>.json`` (the index: each work's title, genre and character offsets),
so a later run reads it back without the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def cache_root(cache_dir=None) -> Path:
    """Where downloads and caches live: ``cache_dir``, else $MINILM_DATA_DIR, else ~/.cache/minilm."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MINILM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minilm"


# ---- reading and cleaning -----------------------------------------------------------------
def load_text(path) -> str:
    """Read a UTF-8 text file (a leading byte-order mark is dropped); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such corpus file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; the corpus must be one UTF-8 text file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset "
                         f"{e.start} (line {line}) {e.reason}; convert it first, e.g. "
                         f"iconv -f latin1 -t utf-8") from None
    return text[1:] if text.startswith("\ufeff") else text


_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """\\r\\n and \\r -> \\n; no spaces or tabs at line ends; two or more blank lines in a row -> one.

    Leading indentation and the line breaks themselves are kept: a play's verse
    lines and songs keep their shape.  The result has no leading or trailing
    blank lines.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


# ---- a corpus of works ----------------------------------------------------------------------
@dataclass
class Work:
    """One work in a corpus; ``text == corpus.text[start:end]``."""
    title: str
    genre: str
    text: str
    start: int
    end: int

    @property
    def n_chars(self) -> int:
        return self.end - self.start

    def __repr__(self):
        return f"Work({self.title!r}, {self.genre!r}, {self.n_chars} chars at {self.start})"


class Corpus:
    """Works joined by ``separator`` into one ``text``, with each work's offsets into it.

    ``works`` is a sequence of (title, genre, text) triples, in corpus order.
    """

    def __init__(self, works, separator: str = "\n\n\n", name: str = "corpus"):
        works = list(works)
        parts, offsets, pos = [], [], 0
        for i, (title, genre, text) in enumerate(works):
            if i:
                parts.append(separator)
                pos += len(separator)
            parts.append(text)
            offsets.append((pos, pos + len(text)))
            pos += len(text)
        self.name = name
        self.separator = separator
        self.text = "".join(parts)
        self.works = [Work(title, genre, text, s, e) for (title, genre, text), (s, e) in zip(works, offsets)]

    def __len__(self):
        return len(self.text)

    def __repr__(self):
        return f"Corpus({self.name!r}: {len(self.works)} works, {len(self.text):,} characters)"

    def works_by_genre(self) -> dict[str, list[Work]]:
        """genre -> its works, in corpus order."""
        out: dict[str, list[Work]] = {}
        for w in self.works:
            out.setdefault(w.genre, []).append(w)
        return out

    def index(self) -> list[dict]:
        """One row per work: title, genre, start, end, chars."""
        return [{"title": w.title, "genre": w.genre, "start": w.start, "end": w.end, "chars": w.n_chars}
                for w in self.works]

    def save(self, directory) -> Path:
        """Write ``<name>.txt`` and ``<name>.json`` into ``directory``; returns the JSON's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        txt, meta = directory / f"{self.name}.txt", directory / f"{self.name}.json"
        _atomic_write_bytes(txt, self.text.encode("utf-8"))
        index = {"name": self.name, "separator": self.separator, "chars": len(self.text),
                 "sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(), "works": self.index()}
        _atomic_write_bytes(meta, json.dumps(index, indent=1, ensure_ascii=False).encode("utf-8"))
        return meta

    @classmethod
    def load(cls, directory, name: str = "corpus") -> "Corpus":
        """Read what ``save`` wrote; raises ValueError if the two files do not agree."""
        directory = Path(directory)
        txt, meta = directory / f"{name}.txt", directory / f"{name}.json"
        for p in (txt, meta):
            if not p.is_file():
                raise FileNotFoundError(f"no saved corpus file {p}")
        text = load_text(txt)
        try:
            index = json.loads(meta.read_text(encoding="utf-8"))
            rows = [(r["title"], r["genre"], r["start"], r["end"]) for r in index["works"]]
            separator, digest = index["separator"], index["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{meta} is not a corpus index: {e!r}") from None
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
            raise ValueError(f"{txt} does not match its index {meta} (checksum differs)")
        corpus = cls([(t, g, text[s:e]) for t, g, s, e in rows], separator=separator, name=name)
        if corpus.text != text:
            raise ValueError(f"{meta}: the works' offsets do not rebuild {txt}")
        return corpus


def _atomic_write_bytes(path: Path, data: bytes):
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- tokens -----------------------------------------------------------------------------------
def encode_corpus(text: str, tokenizer, cache_dir=None) -> np.ndarray:
    """``tokenizer.encode_array(text)``, cached as ``<cache>/tokens/<hash>.npy``.

    The key hashes the text and the tokenizer's JSON, so changing either one
    re-encodes; a cache file that cannot be read is rebuilt.
    """
    h = hashlib.sha256()
    h.update(json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
    h.update(b"\0")
    h.update(text.encode("utf-8", "surrogatepass"))
    folder = cache_root(cache_dir) / "tokens"
    path = folder / f"{h.hexdigest()[:32]}.npy"
    if path.is_file():
        try:
            ids = np.load(path, allow_pickle=False)
            if ids.ndim == 1 and ids.dtype.kind in "iu" and (ids.size == 0 or int(ids.max()) < tokenizer.vocab_size):
                return ids
        except (OSError, ValueError):
            pass
    ids = np.ascontiguousarray(tokenizer.encode_array(text))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{path.stem}.tmp{os.getpid()}.npy"
    np.save(tmp, ids, allow_pickle=False)
    os.replace(tmp, path)
    return ids


def train_val_split(ids, val_fraction: float = 0.1):
    """Contiguous split: the first (1 - val_fraction) of ``ids`` to train on, the rest to validate.

    Contiguous rather than random, so no validation block overlaps a training
    block (a random split of overlapping windows would leak the answers).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    n = len(ids)
    n_train = n - int(round(n * val_fraction))
    if val_fraction > 0 and (n_train == 0 or n_train == n):
        raise ValueError(f"a corpus of {n} tokens is too short to split with val_fraction={val_fraction} "
                         f"({n_train} train / {n - n_train} validation tokens)")
    return ids[:n_train], ids[n_train:]
