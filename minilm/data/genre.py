"""A downstream task for fine-tuning (§3.1 step 4): is a passage from a comedy, a history or a tragedy?

Split by play, never by passage.  A passage names its speakers ("FALSTAFF.",
"LADY MACBETH."), so if passages of one play landed on both sides of the split
a classifier could learn the cast list instead of the genre, and score well for
the wrong reason.  ``split_plays`` therefore holds out whole plays
(``n_test_per_genre`` of each genre, drawn with a seeded generator from the
genre's plays sorted by title, so the choice is reproducible and not
hand-picked), and ``pretraining_text`` is the text a model may be *pretrained*
on for this task: the train plays only.  A model pretrained on the full corpus
has already read the test plays, which leaks them as surely as training on
their passages would.  The poems belong to no genre here and are left out of
both.

Passages (``passages``) are non-overlapping windows of ``length`` characters.
The first 5% of each play is skipped: it is the title page and the list of
characters ("HAMLET, Prince of Denmark ..."), which is not the kind of text we
mean to classify.  ``genre_task`` balances the classes by subsampling each
genre to the smallest genre's count, so accuracy has a plain baseline: one in
three.

A second task, domain adaptation, needs only text: ``poetry_split`` cuts each
poem near its end (at a line break) into a train part and a validation part.

The baseline to beat is word-level multinomial naive Bayes (``NaiveBayes``,
``leave_one_play_out``), written as explicit NumPy math so every number it
produces can be checked by hand.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .corpus import Corpus, Work

GENRE_LABELS = ("comedy", "history", "tragedy")
SKIP_FRACTION = 0.05  # of each play's text: title page and list of characters

__all__ = ["GENRE_LABELS", "split_plays", "pretraining_text", "passages", "GenreTask", "genre_task",
           "poetry_split", "words", "NaiveBayes", "leave_one_play_out"]


# ---- the split -----------------------------------------------------------------------------------
def _plays_by_genre(corpus: Corpus) -> dict[str, list[Work]]:
    """label -> that genre's plays sorted by title; raises if a genre has no play."""
    by_genre = {g: sorted((w for w in corpus.works if w.genre == g), key=lambda w: w.title)
                for g in GENRE_LABELS}
    empty = [g for g, ws in by_genre.items() if not ws]
    if empty:
        found = sorted({w.genre for w in corpus.works})
        raise ValueError(f"the corpus has no plays of genre {empty}; the genre task needs all of "
                         f"{list(GENRE_LABELS)} (genres found: {found})")
    return by_genre


def split_plays(corpus: Corpus, n_test_per_genre: int = 3, seed: int = 0) -> dict[str, list[Work]]:
    """{"train": plays, "test": plays}: ``n_test_per_genre`` plays of each genre held out.

    For each genre in GENRE_LABELS order, one generator ``np.random.default_rng(seed)`` draws the
    test plays from the genre's plays sorted by title.  Both lists are in corpus order; together they
    hold every play exactly once, and no poem.
    """
    by_genre = _plays_by_genre(corpus)
    smallest = min(len(ws) for ws in by_genre.values())
    if not 1 <= n_test_per_genre < smallest:
        raise ValueError(f"n_test_per_genre must be between 1 and {smallest - 1} (each genre must keep at "
                         f"least one play to train on; the smallest genre has {smallest}); got {n_test_per_genre}")
    rng = np.random.default_rng(seed)
    test_ids = set()
    for genre in GENRE_LABELS:
        plays = by_genre[genre]
        for i in rng.choice(len(plays), size=n_test_per_genre, replace=False):
            test_ids.add(id(plays[int(i)]))
    plays = [w for w in corpus.works if w.genre in GENRE_LABELS]
    return {"train": [w for w in plays if id(w) not in test_ids],
            "test": [w for w in plays if id(w) in test_ids]}


def pretraining_text(corpus: Corpus, split: dict[str, list[Work]]) -> str:
    """The train plays' texts joined with ``corpus.separator``: no test play, no poem."""
    try:
        train, test = split["train"], split["test"]
    except (KeyError, TypeError):
        raise ValueError("split must be the dict split_plays returns, with keys 'train' and 'test'") from None
    leaked = sorted({w.title for w in train} & {w.title for w in test})
    if leaked:
        raise ValueError(f"plays on both sides of the split: {leaked}")
    not_plays = [w.title for w in train if w.genre not in GENRE_LABELS]
    if not_plays:
        raise ValueError(f"the train split holds works that are not plays: {not_plays}")
    return corpus.separator.join(w.text for w in train)


# ---- passages ------------------------------------------------------------------------------------
def _label(work: Work) -> int:
    if work.genre not in GENRE_LABELS:
        raise ValueError(f"{work.title!r} is {work.genre!r}, not one of the genre labels {GENRE_LABELS}")
    return GENRE_LABELS.index(work.genre)


def passages(works, length: int = 256, per_work: int | None = None,
             seed: int = 0) -> list[tuple[str, int, str]]:
    """(text, label index, title) for non-overlapping ``length``-character windows of each work.

    Each work's first 5% is skipped; the windows then tile the rest from its start (a remainder
    shorter than ``length`` at the end is dropped).  ``per_work`` keeps at most that many windows of
    each work, drawn with ``np.random.default_rng(seed)``.  The order is always the works' order, and
    within a work the windows' order in the text.
    """
    if length < 1:
        raise ValueError(f"length must be a positive number of characters; got {length}")
    if per_work is not None and per_work < 1:
        raise ValueError(f"per_work must be None or at least 1; got {per_work}")
    rng = np.random.default_rng(seed)
    out = []
    for work in works:
        label, text = _label(work), work.text
        skip = math.ceil(len(text) * SKIP_FRACTION)
        starts = range(skip, len(text) - length + 1, length)
        if per_work is not None and len(starts) > per_work:
            starts = [starts[int(i)] for i in np.sort(rng.choice(len(starts), size=per_work, replace=False))]
        out.extend((text[s:s + length], label, work.title) for s in starts)
    return out


def _balance(items: list, per_genre: int | None, rng: np.random.Generator) -> list:
    """Subsample each label's items to the smallest label's count (or ``per_genre`` if smaller); keeps order."""
    labels = np.array([lab for _, lab, _ in items], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(GENRE_LABELS))
    if counts.min() == 0:
        empty = [g for g, n in zip(GENRE_LABELS, counts) if n == 0]
        raise ValueError(f"no passages of genre {empty}; are the plays shorter than the passage length?")
    n = int(counts.min()) if per_genre is None else min(int(counts.min()), per_genre)
    keep = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=n, replace=False)
                           for c in range(len(GENRE_LABELS))])
    return [items[int(i)] for i in np.sort(keep)]


@dataclass
class GenreTask:
    """Balanced passages of train plays and of held-out test plays; labels index ``labels``."""
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    train_plays: list[str]
    test_plays: list[str]
    labels: tuple[str, ...] = GENRE_LABELS
    length: int = 256

    def summary(self) -> str:
        """Passages per genre on each side, and which plays are held out."""
        def counts(labels):
            n = np.bincount(labels, minlength=len(self.labels))
            return ", ".join(f"{g} {int(k)}" for g, k in zip(self.labels, n))
        return (f"genre task: {self.length}-character passages, labels {list(self.labels)}\n"
                f"  train: {len(self.train_texts)} passages ({counts(self.train_labels)}) "
                f"from {len(self.train_plays)} plays\n"
                f"  test:  {len(self.test_texts)} passages ({counts(self.test_labels)}) "
                f"from {len(self.test_plays)} plays: {'; '.join(self.test_plays)}")


def genre_task(corpus: Corpus | None = None, length: int = 256, n_test_per_genre: int = 3,
               train_per_genre: int | None = None, test_per_genre: int | None = None,
               seed: int = 0) -> GenreTask:
    """Split the plays (``split_plays``), cut passages, and balance each side's genres.

    Each side is subsampled (with ``seed``) to the smallest genre's passage count, or to
    ``train_per_genre`` / ``test_per_genre`` if given and smaller.  ``corpus=None`` loads Shakespeare.
    """
    for name, value in (("train_per_genre", train_per_genre), ("test_per_genre", test_per_genre)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be None or at least 1; got {value}")
    if corpus is None:
        from .shakespeare import load_shakespeare
        corpus = load_shakespeare()
    split = split_plays(corpus, n_test_per_genre=n_test_per_genre, seed=seed)
    rng = np.random.default_rng(seed)
    train = _balance(passages(split["train"], length), train_per_genre, rng)
    test = _balance(passages(split["test"], length), test_per_genre, rng)
    return GenreTask(train_texts=[t for t, _, _ in train],
                     train_labels=np.array([lab for _, lab, _ in train], dtype=np.int64),
                     test_texts=[t for t, _, _ in test],
                     test_labels=np.array([lab for _, lab, _ in test], dtype=np.int64),
                     train_plays=[w.title for w in split["train"]],
                     test_plays=[w.title for w in split["test"]],
                     labels=GENRE_LABELS, length=length)


# ---- domain adaptation: the poems ------------------------------------------------------------------
def poetry_split(corpus: Corpus, val_fraction: float = 0.1) -> tuple[str, str]:
    """(train text, val text) of the poems: each poem cut at (1 - val_fraction) of its length.

    The cut moves back to the line break before that point (the break itself belongs to neither
    part), so no line is split between the two.  Train parts and val parts are each joined with
    ``corpus.separator``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    poems = [w for w in corpus.works if w.genre == "poetry"]
    if not poems:
        found = sorted({w.genre for w in corpus.works})
        raise ValueError(f"the corpus has no works of genre 'poetry' (genres found: {found})")
    train, val = [], []
    for poem in poems:
        text = poem.text
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - val_fraction)) + 1)
        head, tail = text[:max(cut, 0)].rstrip("\n"), text[cut + 1:].lstrip("\n")
        if cut <= 0 or not head or not tail:
            raise ValueError(f"cannot cut {poem.title!r} ({len(text)} chars) at a line break for "
                             f"val_fraction={val_fraction}")
        train.append(head)
        val.append(tail)
    return corpus.separator.join(train), corpus.separator.join(val)


# ---- the baseline: multinomial naive Bayes over words ------------------------------------------------
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words: runs of a-z, with inner apostrophes kept ("o'er", "i'll"); digits and
    punctuation dropped."""
    return _WORD.findall(text.lower())


class NaiveBayes:
    """Multinomial naive Bayes over words, with Laplace (add-alpha) smoothing.

    A passage d with word counts n_w is scored for each class c by its joint log-probability

        log P(c, d) = log P(c) + sum_w n_w log P(w | c)       (up to a term that does not depend on c)

        P(c)     = N_c / N                                     (N_c of the N training passages are class c)
        P(w | c) = (T_cw + alpha) / (T_c + alpha V)            (T_cw: count of w in class c's passages,
                                                                T_c = sum_w T_cw, V: vocabulary size)

    The vocabulary is every word seen in training; words not in it are ignored at predict time (they
    are dropped from d, so they change no class's score).  The prediction is the argmax over c.
    ``fit`` and the scoring methods take texts; the ``*_words`` variants take passages already split
    by ``words``, so a caller that fits many times (``leave_one_play_out``) tokenizes only once.
    """

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (Laplace smoothing; 0 gives log 0 for unseen words); got {alpha}")
        self.alpha = float(alpha)
        self.vocab: dict[str, int] = {}
        self.classes: np.ndarray | None = None   # (C,) the labels seen in fit, sorted
        self.log_prior: np.ndarray | None = None  # (C,) log P(c)
        self.log_prob: np.ndarray | None = None   # (C, V) log P(w | c)

    def __repr__(self):
        state = f"{len(self.classes)} classes, {len(self.vocab)} words" if self.classes is not None else "not fitted"
        return f"NaiveBayes(alpha={self.alpha}, {state})"

    def fit(self, texts, labels) -> "NaiveBayes":
        """Count words per class in ``texts`` (labels: one int per text); returns self."""
        return self.fit_words([words(t) for t in texts], labels)

    def fit_words(self, docs, labels) -> "NaiveBayes":
        """``fit`` for passages already split into words (a list of word lists)."""
        docs, labels = list(docs), np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(docs):
            raise ValueError(f"need one label per passage: {len(docs)} passages, labels of shape {labels.shape}")
        if len(docs) == 0:
            raise ValueError("cannot fit naive Bayes on no passages")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers (class indices); got dtype {labels.dtype}")
        self.classes, y = np.unique(labels, return_inverse=True)
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(w, len(vocab)) for w in doc] for doc in docs]
        C, V = len(self.classes), len(vocab)
        token_class = np.repeat(y, [len(d) for d in ids])
        token_word = np.fromiter((i for d in ids for i in d), dtype=np.int64, count=len(token_class))
        counts = np.bincount(token_class * V + token_word, minlength=C * V).reshape(C, V).astype(np.float64)
        self.vocab = vocab
        self.log_prior = np.log(np.bincount(y, minlength=C) / len(y))
        self.log_prob = np.log(counts + self.alpha) - np.log(counts.sum(axis=1, keepdims=True) + self.alpha * V)
        return self

    def log_joint(self, texts) -> np.ndarray:
        """(N, C) unnormalised log P(c, d) = log P(c) + sum_w n_w log P(w|c), columns in ``classes`` order."""
        return self.log_joint_words([words(t) for t in texts])

    def log_joint_words(self, docs) -> np.ndarray:
        """``log_joint`` for passages already split into words."""
        if self.log_prob is None:
            raise RuntimeError("this NaiveBayes is not fitted yet; call fit(texts, labels) first")
        vocab = self.vocab
        ids = [[vocab[w] for w in doc if w in vocab] for doc in docs]
        token_doc = np.repeat(np.arange(len(ids)), [len(d) for d in ids])
        token_word = np.fromiter((i for d in ids for i in d), dtype=np.int64, count=len(token_doc))
        out = np.empty((len(ids), len(self.classes)))
        for c in range(len(self.classes)):  # sum each token's log P(w|c) into its passage's row
            out[:, c] = np.bincount(token_doc, weights=self.log_prob[c, token_word], minlength=len(ids))
        return out + self.log_prior

    def log_posterior(self, texts) -> np.ndarray:
        """(N, C) log P(c | d): ``log_joint`` normalised over the classes (each row's exp sums to 1)."""
        joint = self.log_joint(texts)
        top = joint.max(axis=1, keepdims=True)
        return joint - (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))

    def predict(self, texts) -> np.ndarray:
        """(N,) int64: the most probable class of each text."""
        return self.predict_words([words(t) for t in texts])

    def predict_words(self, docs) -> np.ndarray:
        return self.classes[np.argmax(self.log_joint_words(docs), axis=1)].astype(np.int64)

    def score(self, texts, labels) -> float:
        """Accuracy: the fraction of ``texts`` whose predicted class is its label."""
        return self.score_words([words(t) for t in texts], labels)

    def score_words(self, docs, labels) -> float:
        labels = np.asarray(labels)
        docs = list(docs)
        if len(labels) != len(docs) or len(docs) == 0:
            raise ValueError(f"need one label per passage and at least one passage: {len(docs)} passages, "
                             f"{len(labels)} labels")
        return float(np.mean(self.predict_words(docs) == labels))


def leave_one_play_out(corpus: Corpus | None = None, length: int = 256, alpha: float = 1.0) -> float:
    """Naive Bayes accuracy when each play is classified by a model trained on all the others.

    Every play's passages (``passages``, no subsampling, no balancing) are scored by a NaiveBayes
    fitted on the passages of the other plays; the result is the fraction of all passages right
    (so long plays weigh more).  ``corpus=None`` loads Shakespeare.
    """
    if corpus is None:
        from .shakespeare import load_shakespeare
        corpus = load_shakespeare()
    plays = [w for by_title in _plays_by_genre(corpus).values() for w in by_title]
    items = passages(plays, length)
    docs = [words(t) for t, _, _ in items]
    labels = np.array([lab for _, lab, _ in items], dtype=np.int64)
    titles = np.array([title for _, _, title in items], dtype=object)
    correct = 0
    for play in plays:
        held = titles == play.title
        if not held.any():
            continue
        train = np.flatnonzero(~held)
        model = NaiveBayes(alpha).fit_words([docs[i] for i in train], labels[train])
        test = np.flatnonzero(held)
        correct += int(np.sum(model.predict_words([docs[i] for i in test]) == labels[test]))
    return correct / len(items)
