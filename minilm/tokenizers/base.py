"""The interface every tokenizer shares, and its JSON file format.

A tokenizer is a pair of inverse maps between text and a sequence of integer
ids in ``range(vocab_size)``: ``encode`` cuts text into tokens and looks each
up; ``decode`` glues the tokens' strings back together.  The model (Eq. G2's
E_token) only ever sees the ids.

A tokenizer is data, not code: ``to_dict()`` is plain JSON with a ``"type"``
field, so ``load_tokenizer`` can rebuild any saved tokenizer without pickle
(loading an untrusted file cannot run code).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..backend import is_array, to_numpy

#: type name -> Tokenizer subclass; filled by ``register``.
TOKENIZER_TYPES: dict[str, type] = {}


def register(cls):
    """Class decorator: make ``cls`` loadable by its ``type_name``."""
    TOKENIZER_TYPES[cls.type_name] = cls
    return cls


class Tokenizer:
    """Text <-> ids.  Subclasses implement encode, decode, vocab_size, to_dict, from_dict."""

    type_name = "base"

    # ---- the two maps ----------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """``encode(text)`` as a 1-D int32 array (subclasses add a faster path for big corpora)."""
        return np.asarray(self.encode(text), dtype=np.int32)

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    # ---- files -------------------------------------------------------------------
    def to_dict(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict):  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path) -> Path:
        """Write the tokenizer as JSON (``{"type": ..., ...}``) to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path):
        """Read a tokenizer saved by ``save``; it must be of this class's type."""
        tok = load_tokenizer(path)
        if cls is not Tokenizer and not isinstance(tok, cls):
            raise ValueError(f"{path} holds a {tok.type_name!r} tokenizer, not a {cls.type_name!r} one "
                             "(minilm.tokenizers.load_tokenizer loads any type)")
        return tok


def load_tokenizer(path_or_dict):
    """Rebuild a tokenizer from a JSON file (or the dict ``to_dict`` made), dispatching on ``"type"``."""
    if isinstance(path_or_dict, dict):
        return _from_dict(path_or_dict, "the tokenizer dict")
    path = Path(path_or_dict)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a tokenizer JSON file: {e}") from None
    return _from_dict(d, str(path))


def _from_dict(d, where: str):
    known = ", ".join(sorted(TOKENIZER_TYPES))
    if not isinstance(d, dict) or "type" not in d:
        raise ValueError(f"{where} is not a tokenizer: it has no \"type\" field (known types: {known})")
    cls = TOKENIZER_TYPES.get(d["type"])
    if cls is None:
        raise ValueError(f"{where} holds a tokenizer of unknown type {d['type']!r} (known types: {known})")
    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{where} is a garbled {d['type']!r} tokenizer: {detail}") from None


def ids_to_numpy(ids) -> np.ndarray:
    """A list, tuple, NumPy/CuPy array or minilm Tensor of ids as a 1-D int64 NumPy array."""
    if is_array(ids):
        arr = to_numpy(ids)
    elif is_array(getattr(ids, "data", None)):  # a minilm Tensor (duck-typed: tokenizers sit below tensors)
        arr = to_numpy(ids.data)
    else:
        arr = np.asarray(ids)
        if arr.size == 0:  # NumPy makes [] float64
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"decode takes a 1-D sequence of ids; got shape {arr.shape} "
                         "(decode each row of a batch separately)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_id_range(ids: np.ndarray, vocab_size: int, who: str):
    """Raise naming the first id outside ``[0, vocab_size)`` and where it sits."""
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size - 1} more bad ids)" if bad.size > 1 else ""
        raise ValueError(f"id {int(ids[i])} at position {i} is out of range for {who} with "
                         f"vocab_size {vocab_size} (valid ids: 0..{vocab_size - 1}){more}")
