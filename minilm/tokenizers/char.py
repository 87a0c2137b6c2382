"""Character-level tokenizer: one token per Unicode character.

The simplest subword scheme is none at all: the vocabulary is the sorted set
of characters seen in training, and a text of n characters becomes n ids.
Small vocabularies (Shakespeare has about 70 characters) make the embedding
table tiny, at the price of long sequences; a character never seen in
training has no id at all, which is why ``encode`` refuses it by name.
Compare byte-level BPE (bpe.py), which can encode any string.
"""
from __future__ import annotations

import numpy as np

from .base import Tokenizer, check_id_range, ids_to_numpy, register


@register
class CharTokenizer(Tokenizer):
    """ids are positions in a sorted list of characters."""

    type_name = "char"

    def __init__(self, chars):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer vocabulary entries must be single characters; got {c!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer vocabulary has duplicate characters: {dup[:10]!r}")
        self.chars = chars                                  # id -> character
        self.stoi = {c: i for i, c in enumerate(chars)}     # character -> id
        # code point -> id (-1: not in the vocabulary), for the vectorised encode_array
        top = max((ord(c) for c in chars), default=0)
        self._table = np.full(top + 1, -1, dtype=np.int32)
        for i, c in enumerate(chars):
            self._table[ord(c)] = i

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary is every distinct character of ``text``, sorted by code point."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.train takes a str; got {type(text).__name__}")
        if not text:
            raise ValueError("cannot train a CharTokenizer on an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    # ---- text -> ids -----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            self._raise_unknown(text)

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised: code points via UTF-32, then one table look-up for the whole text."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if codes.size and int(codes.max()) >= self._table.size:
            self._raise_unknown(text)
        ids = self._table[codes]
        if ids.size and int(ids.min()) < 0:
            self._raise_unknown(text)
        return ids

    def _raise_unknown(self, text: str, show: int = 5):
        seen, bad = set(), []
        for pos, c in enumerate(text):
            if c not in self.stoi:
                bad.append((pos, c))
                seen.add(c)
        where = ", ".join(f"{c!r} at position {pos}" for pos, c in bad[:show])
        more = f" and {len(bad) - show} more" if len(bad) > show else ""
        raise ValueError(f"{len(seen)} character(s) not in this CharTokenizer's vocabulary "
                         f"({self.vocab_size} characters): {where}{more}. Train the tokenizer on "
                         "text that contains them, or use ByteLevelBPE, which encodes any string")

    # ---- ids -> text -----------------------------------------------------------------
    def decode(self, ids) -> str:
        arr = ids_to_numpy(ids)
        check_id_range(arr, self.vocab_size, "a CharTokenizer")
        chars = self.chars
        return "".join([chars[i] for i in arr.tolist()])

    # ---- files -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": self.type_name, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        chars = d["chars"]
        if not isinstance(chars, list):
            raise ValueError(f"\"chars\" must be a list of characters; got {type(chars).__name__}")
        return cls(chars)
