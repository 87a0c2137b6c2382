"""WordPiece, BERT's tokenizer: normalise, split into words, cut words into vocabulary pieces.

Where BPE (bpe.py) *learns* merges and replays them, WordPiece only needs a
vocabulary: a list of strings, one per id (BERT's ``vocab.txt``, one token a
line, the line number is the id).  A piece that starts a word is stored as
is ("play"); a piece that continues a word carries the prefix "##" ("##ing").
Encoding a text runs four steps:

1. **Special tokens first.**  Tokens such as "[MASK]" or "[SEP]" written
   literally in the raw text are cut out before anything else and become their
   own id (so "[MASK]" is not lower-cased and split at its brackets).  The
   match is case-sensitive: "[mask]" is ordinary text.  This is what the fast
   (Rust) BERT tokenizer of ``transformers`` does with its added tokens.
2. **Normalise** each stretch of text between special tokens, as the Rust
   ``BertNormalizer`` does (Google's ``BasicTokenizer`` differs in two corners,
   see ``is_control`` and ``CJK_RANGES``):

   a. *clean*: drop U+0000, U+FFFD and control/format characters (Unicode
      categories Cc, Cf, Co, Cs, except tab, newline and carriage return);
      turn every whitespace character (tab, newline, CR, and the Unicode
      White_Space ones) into " ";
   b. *CJK*: put a space on both sides of every CJK ideograph, so Chinese
      (which has no spaces) is tokenized one character at a time;
   c. *strip accents*: decompose (Unicode NFD: "é" -> "e" + U+0301) and drop
      the non-spacing marks (category Mn): "café" -> "cafe";
   d. *lower-case*, one character at a time (so a word-final "Σ" becomes "σ",
      not "ς", as the Rust tokenizer does).
3. **Pre-tokenize** into words: split on spaces, then cut every punctuation
   character out as a word of its own ("don't" -> "don", "'", "t").  BERT's
   punctuation is the ASCII ranges 33-47, 58-64, 91-96, 123-126 (so "$", "+",
   "^", "`" count, although Unicode files them as symbols) plus every Unicode
   category P*.
4. **WordPiece** each word, greedy longest match first: at position ``start``
   take the longest ``word[start:end]`` that is in the vocabulary (with "##"
   in front when ``start > 0``), emit it, continue from ``end``.  If some
   position has no match at all, or the word is longer than
   ``max_input_chars_per_word`` characters, the *whole word* becomes [UNK].
   With a vocabulary holding "un", "##aff" and "##able" (and not "una",
   "unaf", ...): "unaffable" -> "un", "##aff", "##able".

Finally ``encode`` adds the frame the model was trained with: ``[CLS] A [SEP]``
for one text, ``[CLS] A [SEP] B [SEP]`` for a pair, with segment ids
(``token_type_ids``) 0 for the first part and 1 for ``B [SEP]``.

Decoding joins the pieces with spaces and glues every "##" piece to the one
before it.  It cannot undo step 2 (case, accents and the exact spacing are
gone): ``decode(encode(x))`` gives the *normalised* text, words separated by
single spaces — ``" ".join(basic_tokenize(x))`` whenever no word became [UNK].

All of this matches ``transformers``' fast ``BertTokenizer`` (the Rust
``tokenizers``) id for id (tests/test_wordpiece.py).  What is left are Unicode
versions: Python's ``unicodedata`` is newer than the Rust crate's category
tables, so about 500 characters added to Unicode since (new punctuation such
as U+2E4C "⹌" MEDIEVAL COMMA, new combining marks, a few format characters) or
re-classified are split, stripped or dropped here but not there (checking
every code point one at a time against transformers 5.x found 503 such).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Tokenizer, check_id_range, ids_to_numpy, register

#: The prefix of a piece that continues a word.
CONTINUATION = "##"

#: Code point ranges of CJK ideographs that get a space on each side (BERT's
#: ``_is_chinese_char``).  Google's BERT has U+2B820..U+2CEAF for the sixth
#: range; the Rust ``tokenizers`` (the reference we match) starts it at
#: U+2B920, so U+2B820..U+2B91F are not split off there, nor here.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))

#: Truncation strategies understood by ``encode`` / ``encode_batch``.
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")

# Rust's char::is_whitespace (the Unicode White_Space property), which the fast
# tokenizer uses; Python's str.isspace also counts U+001C..U+001F, which are
# control characters and are dropped by the cleaning step before this matters.
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                        "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


# ---- the character classes ---------------------------------------------------------------------
def is_whitespace(ch: str) -> bool:
    """Tab, newline, CR and the Unicode White_Space characters ("\\u3000", "\\xa0", ...)."""
    return ch in _WHITESPACE or unicodedata.category(ch) == "Zs"


def is_control(ch: str) -> bool:
    """Categories Cc, Cf, Co, Cs, except tab, newline and CR (those are whitespace).

    Google's BERT takes every C* category, unassigned code points (Cn)
    included; the Rust ``tokenizers`` (our reference) keeps Cn, and so do we.
    """
    if ch in "\t\n\r":
        return False
    cat = unicodedata.category(ch)
    return cat[0] == "C" and cat != "Cn"


def is_punctuation(ch: str) -> bool:
    """BERT's punctuation: the four ASCII punctuation ranges, or any Unicode category P*."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (``CJK_RANGES``); not Hiragana, Katakana or Hangul."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


# ---- the normalisation steps (2a-2d) -----------------------------------------------------------
def clean_text(text: str) -> str:
    """Step 2a: drop U+0000, U+FFFD and control characters; every whitespace character -> " "."""
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or is_control(ch):
            continue
        out.append(" " if is_whitespace(ch) else ch)
    return "".join(out)


def space_cjk(text: str) -> str:
    """Step 2b: " 中 " for every CJK ideograph 中, so each becomes a word of its own."""
    return "".join(f" {ch} " if is_cjk(ch) else ch for ch in text)


def strip_accents(text: str) -> str:
    """Step 2c: Unicode NFD, then drop the non-spacing marks (category Mn): "Zoë" -> "Zoe"."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def lowercase(text: str) -> str:
    """Step 2d: lower-case each character on its own (no final-sigma rule, unlike ``str.lower``)."""
    return "".join(ch.lower() for ch in text)


def split_on_punctuation(word: str) -> list[str]:
    """Step 3: cut every punctuation character out of ``word``: "e-mail!" -> ["e", "-", "mail", "!"]."""
    pieces, current = [], []
    for ch in word:
        if is_punctuation(ch):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(ch)
        else:
            current.append(ch)
    if current:
        pieces.append("".join(current))
    return pieces


# ---- an encoded text -----------------------------------------------------------------------------
@dataclass
class Encoding:
    """One encoded text (or pair): three aligned lists, as a BERT model takes them.

    ``input_ids``: token ids; ``token_type_ids``: segment of each token (0 for
    ``[CLS] A [SEP]``, 1 for ``B [SEP]``); ``attention_mask``: 1 for a real
    token (0 only appears after padding, see ``encode_batch``); ``tokens``: the
    token strings, for reading.  ``enc["input_ids"]`` works as for a dict.
    """

    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    tokens: list[str]

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, name: str):
        if name not in ("input_ids", "token_type_ids", "attention_mask", "tokens"):
            raise KeyError(f"an Encoding has input_ids, token_type_ids, attention_mask and tokens; "
                           f"not {name!r}")
        return getattr(self, name)

    def to_dict(self) -> dict:
        """The three model inputs as a dict of lists (no ``tokens``)."""
        return {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_mask": self.attention_mask}


# ---- the tokenizer -------------------------------------------------------------------------------
@register
class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece tokenizer over a fixed vocabulary (id = position in ``vocab``).

        tok = WordPieceTokenizer.from_pretrained("path/to/bert")    # vocab.txt + tokenizer_config.json
        tok.tokenize("Whither goest thou?")    # ['w', '##hit', '##her', 'goes', '##t', 'thou', '?']
        enc = tok.encode("A question", "an answer")   # Encoding: input_ids, token_type_ids, ...
        batch = tok.encode_batch(["one", "two texts"])  # dict of (B, T) int64 arrays, [PAD]-padded
        tok.decode(enc.input_ids)              # 'a question an answer'

    ``lowercase``: lower-case in normalisation (an "uncased" model).
    ``strip_accents``: drop accents; ``None`` follows ``lowercase``, as BERT does.
    ``tokenize_chinese_chars``: split CJK ideographs into one word each.
    ``max_input_chars_per_word``: a longer word is [UNK] without trying.
    ``unk``, ``cls``, ``sep``, ``pad``, ``mask``: the special tokens; each must be in
    the vocabulary, except that any but ``unk`` may be ``None`` (not used; the
    operations that need it then say so).  ``never_split``: more tokens that,
    like the special ones, are kept whole when written in a text.
    ``model_max_length``: the longest input the model takes (BERT: 512); the
    default limit of ``encode_batch(truncation=True)``.  ``None``: no limit.
    """

    type_name = "wordpiece"

    def __init__(self, vocab, *, lowercase: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, max_input_chars_per_word: int = 100,
                 unk: str = "[UNK]", cls: str | None = "[CLS]", sep: str | None = "[SEP]",
                 pad: str | None = "[PAD]", mask: str | None = "[MASK]", never_split=(),
                 model_max_length: int | None = None):
        vocab = list(vocab)
        for i, t in enumerate(vocab):
            if not isinstance(t, str):
                raise ValueError(f"vocabulary entry {i} is {t!r}; entries must be strings")
        if not vocab:
            raise ValueError("a WordPieceTokenizer needs a non-empty vocabulary")
        self.vocab: list[str] = vocab                                    # id -> token
        # token -> id; a repeated line keeps its last id, as transformers' load_vocab does
        self.token_ids: dict[str, int] = {t: i for i, t in enumerate(vocab)}
        self.lowercase = bool(lowercase)
        self.strip_accents = None if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be a positive int; got {max_input_chars_per_word!r}")
        self.max_input_chars_per_word = max_input_chars_per_word
        if model_max_length is not None and (not isinstance(model_max_length, int) or model_max_length < 1):
            raise ValueError(f"model_max_length must be a positive int or None; got {model_max_length!r}")
        self.model_max_length = model_max_length

        self.unk, self.cls, self.sep, self.pad, self.mask = unk, cls, sep, pad, mask
        named = {"unk": unk, "cls": cls, "sep": sep, "pad": pad, "mask": mask}
        if unk is None:
            raise ValueError("WordPiece needs an unknown token (unk): a word it cannot cut becomes it")
        for role, tok in named.items():
            if tok is not None and (not isinstance(tok, str) or not tok):
                raise ValueError(f"the {role} token must be a non-empty string or None; got {tok!r}")
            if tok is not None and tok not in self.token_ids:
                raise ValueError(f"the {role} token {tok!r} is not in the vocabulary "
                                 f"({len(vocab)} tokens; it starts {vocab[:5]!r})")
        if isinstance(never_split, str):
            raise TypeError(f"never_split must be a list of tokens; got the str {never_split!r}")
        self.never_split = list(never_split)
        for t in self.never_split:
            if not isinstance(t, str) or not t:
                raise ValueError(f"never_split entries must be non-empty strings; got {t!r}")
            if t not in self.token_ids:
                raise ValueError(f"the never_split token {t!r} is not in the vocabulary")
        #: every token kept whole in raw text: the special ones, then never_split
        self.special_tokens: list[str] = []
        for t in [unk, cls, sep, pad, mask, *self.never_split]:
            if t is not None and t not in self.special_tokens:
                self.special_tokens.append(t)
        # longest first, so a token is not cut short by another that is its prefix
        alternatives = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alternatives)))
        self._special_ids = frozenset(self.token_ids[t] for t in (unk, cls, sep, pad, mask) if t is not None)
        self._cache: dict[str, list[str]] = {}

    # ---- construction from files ---------------------------------------------------------------
    @classmethod
    def from_vocab(klass, path, lowercase: bool = True, strip_accents: bool | None = None,
                   tokenize_chinese_chars: bool = True, max_input_chars_per_word: int = 100,
                   unk: str = "[UNK]", cls: str | None = "[CLS]", sep: str | None = "[SEP]",
                   pad: str | None = "[PAD]", mask: str | None = "[MASK]", never_split=(),
                   model_max_length: int | None = None) -> "WordPieceTokenizer":
        """Read a ``vocab.txt`` (one token a line; line n is id n) and build the tokenizer.

        The options are the class's (see its docstring).
        """
        return klass(read_vocab(path), lowercase=lowercase, strip_accents=strip_accents,
                     tokenize_chinese_chars=tokenize_chinese_chars,
                     max_input_chars_per_word=max_input_chars_per_word, unk=unk, cls=cls, sep=sep,
                     pad=pad, mask=mask, never_split=never_split, model_max_length=model_max_length)

    @classmethod
    def from_pretrained(klass, folder, **overrides) -> "WordPieceTokenizer":
        """Build from a Hugging Face model folder: ``vocab.txt``, plus ``tokenizer_config.json`` if present.

        From the config: ``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``,
        the ``*_token`` special tokens, ``never_split``, ``model_max_length`` and the
        special entries of ``added_tokens_decoder``.  ``overrides`` (``from_vocab``'s
        keywords) win over the config.
        """
        folder = Path(folder)
        vocab_path = folder / "vocab.txt"
        if not vocab_path.is_file():
            have = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
            where = f"it holds {have}" if have is not None else "it is not a folder"
            raise FileNotFoundError(f"no vocab.txt in {folder} ({where}); WordPieceTokenizer.from_pretrained "
                                    "needs a BERT-style folder")
        kw: dict = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{config_path} is not a JSON file: {e}") from None
            kw = _options_from_config(config, config_path)
        kw.update(overrides)
        vocab = read_vocab(vocab_path)
        extra = kw.pop("_added_tokens", [])
        missing = [t for t in extra if t not in set(vocab)]
        if missing:
            raise ValueError(f"{config_path} adds special token(s) {missing!r} that are not in "
                             f"{vocab_path}; WordPieceTokenizer only knows vocabulary tokens")
        specials = {kw.get(k, d) for k, d in (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"),
                                             ("pad", "[PAD]"), ("mask", "[MASK]"))}
        kw["never_split"] = list(dict.fromkeys([*kw.get("never_split", []),
                                                *(t for t in extra if t not in specials)]))
        try:
            return klass(vocab, **kw)
        except TypeError as e:
            raise TypeError(f"WordPieceTokenizer.from_pretrained: {e} (overrides take from_vocab's "
                            "keywords)") from None

    # ---- the vocabulary ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        """The id of a vocabulary token ("##ing" for a continuation piece)."""
        try:
            return self.token_ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in this WordPiece vocabulary ({self.vocab_size} tokens); "
                           "tokenize(text) cuts text into tokens that are") from None

    def id_to_token(self, i: int) -> str:
        """The token string of id ``i``."""
        check_id_range(np.asarray([i]), self.vocab_size, "a WordPieceTokenizer")
        return self.vocab[int(i)]

    def _id(self, role: str):
        tok = getattr(self, role)
        return None if tok is None else self.token_ids[tok]

    @property
    def unk_id(self) -> int:
        return self._id("unk")

    @property
    def cls_id(self) -> int | None:
        return self._id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._id("sep")

    @property
    def pad_id(self) -> int | None:
        return self._id("pad")

    @property
    def mask_id(self) -> int | None:
        return self._id("mask")

    @property
    def special_ids(self) -> list[int]:
        """Ids of unk, cls, sep, pad, mask (those set), sorted; ``decode`` skips these by default."""
        return sorted(self._special_ids)

    def __repr__(self):
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"strip_accents={self._strips_accents()})")

    def _strips_accents(self) -> bool:
        return self.lowercase if self.strip_accents is None else self.strip_accents

    # ---- text -> words (steps 1-3) -------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Step 2 on a stretch of text with no special token: clean, space CJK, strip accents, lower-case."""
        text = clean_text(text)
        if self.tokenize_chinese_chars:
            text = space_cjk(text)
        if self._strips_accents():
            text = strip_accents(text)
        if self.lowercase:
            text = lowercase(text)
        return text

    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        """Step 1: ``[(piece, is_special), ...]`` with special tokens cut out of the raw text."""
        out, pos = [], 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                out.append((text[pos:m.start()], False))
            out.append((m.group(), True))
            pos = m.end()
        if pos < len(text):
            out.append((text[pos:], False))
        return out

    def _words(self, text: str) -> list[tuple[str, bool]]:
        """Steps 1-3 with a flag: ``[(word, is_special), ...]``."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer takes a str; got {type(text).__name__}")
        words = []
        for piece, special in self._split_special(text):
            if special:
                words.append((piece, True))
                continue
            for word in self.normalize(piece).split(" "):
                if word:
                    words.extend((w, False) for w in split_on_punctuation(word))
        return words

    def basic_tokenize(self, text: str) -> list[str]:
        """Steps 1-3: the words WordPiece will cut (special tokens kept whole).

        "Héllo, [MASK] wörld!" -> ["hello", ",", "[MASK]", "world", "!"].
        """
        return [w for w, _ in self._words(text)]

    # ---- word -> pieces (step 4) ---------------------------------------------------------------
    def wordpiece(self, word: str) -> list[str]:
        """Step 4, greedy longest match first: ``"unaffable"`` -> ``["un", "##aff", "##able"]`` (say).

        From ``start = 0``: try ``end = len(word)``, then shorter, until
        ``word[start:end]`` (as "##" + it when ``start > 0``) is in the
        vocabulary; emit it and go on from ``end``.  No match at some ``start``,
        or more than ``max_input_chars_per_word`` characters: ``[unk]``.
        """
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        vocab = self.token_ids
        pieces: list[str] = []
        n = len(word)
        if n > self.max_input_chars_per_word:
            pieces = [self.unk]
        else:
            start = 0
            while start < n:
                end, piece = n, None
                while start < end:
                    candidate = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                    if candidate in vocab:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:       # nothing in the vocabulary starts here: the word is unknown
                    pieces = [self.unk]
                    break
                pieces.append(piece)
                start = end
        if len(self._cache) >= 1 << 16:
            self._cache.clear()
        self._cache[word] = pieces
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Steps 1-4: the word pieces of ``text``, no [CLS]/[SEP].

        "Whither goest thou?" -> ["w", "##hit", "##her", "goes", "##t", "thou", "?"] (BERT's vocabulary).
        """
        return [p for w, special in self._words(text) for p in ([w] if special else self.wordpiece(w))]

    def _ids(self, text: str) -> list[int]:
        ids = self.token_ids
        return [ids[p] for p in self.tokenize(text)]

    # ---- text -> model inputs ------------------------------------------------------------------
    def num_special_tokens(self, pair: bool = False) -> int:
        """How many ids ``add_special_tokens`` adds: 2 for one text ([CLS] A [SEP]), 3 for a pair."""
        return 3 if pair else 2

    def encode(self, text: str, pair: str | None = None, add_special_tokens: bool = True,
               max_length: int | None = None, truncation="longest_first") -> Encoding:
        """Encode ``text`` (and ``pair``) into an ``Encoding`` of ``input_ids``, ``token_type_ids``, ``attention_mask``.

        ``add_special_tokens``: frame as ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]``.
        ``max_length``: at most this many ids in all, special tokens included;
        ``truncation`` says which side loses tokens (from the end):

        * ``"longest_first"`` (or ``True``): for a pair, as Hugging Face does —
          if only the longer text must shrink, cut it to what the shorter one
          leaves; if both must, each gets half the room (an odd one goes to the
          longer text, to B on a tie);
        * ``"only_first"`` / ``"only_second"``: only A / only B is cut (an error
          if that is not enough);
        * ``False``: never cut (then ``max_length`` must be None).

        Unlike the base ``Tokenizer.encode`` this returns an ``Encoding``, not a
        list; ``encode(text).input_ids`` or ``encode_array(text)`` give the ids.
        """
        strategy = _truncation_strategy(truncation)
        if strategy is None and max_length is not None:
            raise ValueError(f"max_length={max_length} was given with truncation=False; encode does "
                             "not pad, so nothing would use it (pad with encode_batch)")
        if pair is not None and not isinstance(pair, str):
            raise TypeError(f"the pair text must be a str or None; got {type(pair).__name__}")
        a = self._ids(text)
        b = self._ids(pair) if pair is not None else None
        if max_length is not None:
            a, b = self._truncate(a, b, max_length, strategy, add_special_tokens)
        return self._build(a, b, add_special_tokens)

    def _truncate(self, a, b, max_length, strategy, add_special_tokens):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive int; got {max_length!r}")
        n_special = self.num_special_tokens(b is not None) if add_special_tokens else 0
        room = max_length - n_special
        if room < 0:
            raise ValueError(f"max_length={max_length} leaves no room: the special tokens alone "
                             f"take {n_special}")
        n1, n2 = len(a), (len(b) if b is not None else 0)
        if n1 + n2 <= room:
            return a, b
        if b is None:
            if strategy == "only_second":
                raise ValueError("truncation='only_second' needs a pair of texts; this is a single text")
            return a[:room], None
        if strategy == "longest_first":
            short = min(n1, n2)
            keep_short = short
            keep_long = max(short, room - short)    # only the longer text shrinks, if that is enough
            if keep_short + keep_long > room:       # else both shrink to half (odd one to the longer)
                keep_short, keep_long = room // 2, room // 2 + room % 2
            k1, k2 = (keep_long, keep_short) if n1 > n2 else (keep_short, keep_long)
            return a[:k1], b[:k2]
        over = n1 + n2 - room
        if strategy == "only_first":
            if n1 <= over:
                raise ValueError(f"truncation='only_first' cannot fit max_length={max_length}: the first "
                                 f"text has {n1} tokens but {over} must go (use 'longest_first')")
            return a[:n1 - over], b
        if n2 <= over:
            raise ValueError(f"truncation='only_second' cannot fit max_length={max_length}: the second "
                             f"text has {n2} tokens but {over} must go (use 'longest_first')")
        return a, b[:n2 - over]

    def _build(self, a: list[int], b: list[int] | None, add_special_tokens: bool) -> Encoding:
        if add_special_tokens:
            if self.cls is None or self.sep is None:
                raise ValueError("add_special_tokens needs the cls and sep tokens, but this tokenizer "
                                 f"has cls={self.cls!r}, sep={self.sep!r} (pass add_special_tokens=False)")
            ids = [self.cls_id, *a, self.sep_id]
            types = [0] * len(ids)
            if b is not None:
                ids += [*b, self.sep_id]
                types += [1] * (len(b) + 1)
        else:
            ids = list(a) + (list(b) if b is not None else [])
            types = [0] * len(a) + [1] * (len(b) if b is not None else 0)
        vocab = self.vocab
        return Encoding(ids, types, [1] * len(ids), [vocab[i] for i in ids])

    def encode_array(self, text: str) -> np.ndarray:
        """``encode(text).input_ids`` ([CLS] ... [SEP]) as a 1-D int32 array."""
        return np.asarray(self.encode(text).input_ids, dtype=np.int32)

    def encode_batch(self, texts, padding=True, max_length: int | None = None, truncation=True,
                     return_arrays: bool = True, add_special_tokens: bool = True) -> dict:
        """Encode many texts (or ``(a, b)`` pairs) at once, padded into a rectangle.

        ``texts``: a list whose items are strings or 2-tuples/lists of strings.
        ``truncation``: ``True``/``"longest_first"``/``"only_first"``/``"only_second"``
        cut each item to ``max_length`` (default ``model_max_length``; no limit if
        both are None); ``False`` keeps every token.
        ``padding``: ``True``/``"longest"`` pads every row on the right to the
        longest row; ``"max_length"`` to ``max_length`` (or ``model_max_length``);
        ``False``/``"do_not_pad"`` leaves the rows ragged.  Padding uses the [PAD]
        id, segment 0 and attention mask 0 (attention must ignore those slots).

        Returns ``{"input_ids", "token_type_ids", "attention_mask"}``: int64 NumPy
        arrays of shape (B, T) if ``return_arrays``, else lists of lists.
        """
        if isinstance(texts, (str, tuple)):
            raise TypeError("encode_batch takes a list of texts (or of (a, b) pairs); for one text use encode")
        items = list(texts)
        strategy = _truncation_strategy(truncation)
        pad_mode = _padding_mode(padding)
        limit = max_length if max_length is not None else self.model_max_length
        encs = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                a_text, b_text = item, None
            elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item):
                a_text, b_text = item
            else:
                raise TypeError(f"item {i} of the batch is {item!r}; each item must be a str or a pair "
                                "(a, b) of strs")
            a = self._ids(a_text)
            b = self._ids(b_text) if b_text is not None else None
            if strategy is not None and limit is not None:
                try:
                    a, b = self._truncate(a, b, limit, strategy, add_special_tokens)
                except ValueError as e:
                    raise ValueError(f"item {i} of the batch: {e}") from None
            encs.append(self._build(a, b, add_special_tokens))

        if pad_mode == "longest":
            width = max((len(e) for e in encs), default=0)
        elif pad_mode == "max_length":
            if limit is None:
                raise ValueError("padding='max_length' needs max_length (this tokenizer has no model_max_length)")
            width = limit
        else:
            width = None
        if width is not None:
            if self.pad is None and any(len(e) < width for e in encs):
                raise ValueError("padding needs a pad token, but this tokenizer has pad=None")
            for e in encs:
                n = width - len(e)
                if n > 0:
                    e.input_ids += [self.pad_id] * n
                    e.token_type_ids += [0] * n
                    e.attention_mask += [0] * n
        out = {k: [getattr(e, k) for e in encs] for k in ("input_ids", "token_type_ids", "attention_mask")}
        if not return_arrays:
            return out
        lengths = sorted({len(e) for e in encs})
        if len(lengths) > 1:
            raise ValueError(f"the rows have different lengths {lengths[:5]} (padding={padding!r}, "
                             f"truncation={truncation!r}); arrays need padding=True, or return_arrays=False")
        T = lengths[0] if lengths else 0
        return {k: np.asarray(v, dtype=np.int64).reshape(len(encs), T) for k, v in out.items()}

    # ---- ids -> text -----------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True, cleanup: bool = False) -> str:
        """Join the pieces with spaces and glue each "##" piece to the one before it.

        ``skip_special_tokens``: leave out [CLS], [SEP], [PAD], [MASK] and [UNK].
        ``cleanup``: also remove the space before "." "?" "!" "," as Hugging
        Face's WordPiece decoder does ("hello , world ." -> "hello, world.").
        Without it the result is the normalised words joined by single spaces.
        """
        arr = ids_to_numpy(ids)
        check_id_range(arr, self.vocab_size, "a WordPieceTokenizer")
        skip = self._special_ids if skip_special_tokens else ()
        parts = []
        for i in arr.tolist():
            if i in skip:
                continue
            tok = self.vocab[i]
            if parts and tok.startswith(CONTINUATION):
                tok = tok[len(CONTINUATION):]
            elif parts:
                tok = " " + tok
            if cleanup:
                tok = _cleanup(tok)
            parts.append(tok)
        return "".join(parts)

    # ---- files -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": self.type_name, "vocab": list(self.vocab), "lowercase": self.lowercase,
                "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                "max_input_chars_per_word": self.max_input_chars_per_word, "unk": self.unk, "cls": self.cls,
                "sep": self.sep, "pad": self.pad, "mask": self.mask, "never_split": list(self.never_split),
                "model_max_length": self.model_max_length}

    @classmethod
    def from_dict(cls, d: dict) -> "WordPieceTokenizer":
        vocab = d["vocab"]
        if not isinstance(vocab, list):
            raise ValueError(f"\"vocab\" must be a list of token strings; got {type(vocab).__name__}")
        never_split = d.get("never_split", [])
        if not isinstance(never_split, list):
            raise ValueError("\"never_split\" must be a list of token strings")
        return cls(vocab, lowercase=d.get("lowercase", True), strip_accents=d.get("strip_accents"),
                   tokenize_chinese_chars=d.get("tokenize_chinese_chars", True),
                   max_input_chars_per_word=d.get("max_input_chars_per_word", 100),
                   unk=d.get("unk", "[UNK]"), cls=d.get("cls", "[CLS]"), sep=d.get("sep", "[SEP]"),
                   pad=d.get("pad", "[PAD]"), mask=d.get("mask", "[MASK]"), never_split=never_split,
                   model_max_length=d.get("model_max_length"))

    def save_vocab(self, path) -> Path:
        """Write ``vocab.txt`` (one token a line), the file ``from_vocab`` reads; returns the path."""
        path = Path(path)
        bad = [t for t in self.vocab if "\n" in t or "\r" in t]
        if bad:
            raise ValueError(f"token {bad[0]!r} holds a line break; it cannot be written to vocab.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8", newline="\n")
        return path


# ---- helpers -------------------------------------------------------------------------------------
def read_vocab(path) -> list[str]:
    """The tokens of a ``vocab.txt``, in id order (line breaks "\\n" or "\\r\\n"; no trailing empty token)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vocabulary file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not vocab:
        raise ValueError(f"{path} is empty; a vocab.txt has one token a line")
    return vocab


def _token_name(v):
    """A special token in tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(v, dict):
        return v.get("content")
    return v


def _options_from_config(config: dict, where) -> dict:
    if not isinstance(config, dict):
        raise ValueError(f"{where} must hold a JSON object")
    if config.get("do_basic_tokenize", True) is False:
        raise ValueError(f"{where} sets do_basic_tokenize=false; WordPieceTokenizer always runs BERT's "
                         "basic tokenization")
    kw: dict = {}
    for key, opt in (("do_lower_case", "lowercase"), ("strip_accents", "strip_accents"),
                     ("tokenize_chinese_chars", "tokenize_chinese_chars")):
        if key in config:
            kw[opt] = config[key]
    for key, opt in (("unk_token", "unk"), ("cls_token", "cls"), ("sep_token", "sep"),
                     ("pad_token", "pad"), ("mask_token", "mask")):
        if key in config:
            kw[opt] = _token_name(config[key])
    if config.get("never_split"):
        kw["never_split"] = list(config["never_split"])
    m = config.get("model_max_length")
    if isinstance(m, int) and 0 < m < 10 ** 9:   # transformers writes ~1e30 for "no limit"
        kw["model_max_length"] = m
    added = config.get("added_tokens_decoder") or {}
    kw["_added_tokens"] = [_token_name(v) for v in added.values()
                           if isinstance(v, dict) and v.get("special") and _token_name(v)]
    return kw


def _truncation_strategy(truncation):
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation is None or truncation == "do_not_truncate":
        return None
    if truncation in TRUNCATION_STRATEGIES:
        return truncation
    raise ValueError(f"truncation={truncation!r}; use True, False or one of {TRUNCATION_STRATEGIES}")


def _padding_mode(padding):
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding={padding!r}; use True/'longest', 'max_length' or False/'do_not_pad'")


def _cleanup(s: str) -> str:
    """Hugging Face's ``cleanup`` of a decoded piece (applied piece by piece, as its WordPiece decoder does)."""
    for dirty, clean in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
        s = s.replace(dirty, clean)
    return s
