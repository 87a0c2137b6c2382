"""A sentence-pair task for BERT's segments (G2's E_seg): does line B follow line A in the play?

**Next-line prediction.**  A is a line of dialogue, or a short run of consecutive
lines (at most ``max_chars`` characters together); B is either the line that
follows A in the play (label 1) or a line from one of the *other* plays on the
same side of the split (label 0).  The two classes are balanced and every choice
is drawn from a seeded generator.  A model sees the pair the way BERT does,
``[CLS] A [SEP] B [SEP]`` with segment ids 0 for ``[CLS] A [SEP]`` and 1 for
``B [SEP]`` (``WordPieceTokenizer.encode_batch`` with ``(a, b)`` items), so this
is the task on which the segment embedding E_seg(s_i) of Eq. G2 has a job to do.
(BERT's own pretraining had a close cousin, next-*sentence* prediction, whose
negatives came from other documents, as ours come from other plays.)

**Split by play.**  As in the genre task (``minilm.data.genre``), and for the
same reason, train and test never share a play: ``pair_task`` calls
``split_plays`` with the same ``n_test_per_genre`` and ``seed``, so its
held-out plays are exactly the genre task's.  Negatives are drawn from the other
plays *of the same side*, so no test line ever appears in a training pair.

**What a "line" is** (:func:`dialogue_lines`).  The corpus keeps the Gutenberg
layout: a speech is a paragraph whose first line is the speaker's name
("MACBETH.", "HERMIA", "Ham.", "Lady Capulet."), stage directions are in square
brackets (as paragraphs of their own, or inline: "[within.] Francis!"), and
"ACT I." / "Scene II. A street." paragraphs start scenes.  A *dialogue line* is
a line of a speech with the speaker heading dropped, the bracketed stage
directions cut out and the indentation stripped; what is left empty is dropped.
The first 5% of each play (title page, list of characters: ``genre.SKIP_FRACTION``)
is skipped as in the genre task.  Consecutive dialogue lines may belong to
different speakers (B can be the reply to A), but never to different scenes: a
positive pair never crosses an ACT or SCENE heading.  The heading rules are
heuristics for this edition's layout; a rare line that looks like a speaker name
("Anon." alone at the start of a paragraph after a stage direction) is dropped.

**A and B.**  A starts at a dialogue line and takes the following lines of the
same scene while the run, joined with "\\n", stays within ``max_chars``
characters (the longest such run; a first line longer than ``max_chars`` cannot
start an A).  A positive B is the next dialogue line of the scene; a negative B
is a line drawn uniformly from the other plays of the same side.  B too is at
most ``max_chars`` long, for both labels alike (so its length tells nothing).

**The sample.**  ``split_plays`` needs at least two plays of each genre, and the
packaged sample (``load_sample``: one comedy, one tragedy, the Sonnets) has
one.  :func:`pair_task_within_plays` therefore splits *each play's lines* 80/20
(first 80% of its dialogue lines for training, the last 20% for testing) and
draws negatives from the other play.  Train and test then share plays — the
same characters, names and story — so its accuracy says less about
generalisation than ``pair_task``'s: it exists for lessons and CI, which must
run without the network, not for measurement.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .corpus import Corpus, Work
from .genre import GENRE_LABELS, SKIP_FRACTION, split_plays

__all__ = ["Line", "dialogue_lines", "is_speaker_heading", "is_scene_heading", "PairTask", "pair_task",
           "pair_task_within_plays", "PAIR_LABELS"]

PAIR_LABELS = ("not next", "next")          # label 0: B is from another play; label 1: B follows A

_SCENE = re.compile(r"^(ACT|SCENE|Act|Scene)\b")
# "Ham.", "Lady Capulet.", "1 Clown.", "P. Queen.", "Mar. and Ber.", "I Play.": capitalised words (and the
# small words "and", "of", "the"), each possibly abbreviated, the whole ending with a full stop
_MIXED_CASE_SPEAKER = re.compile(r"^(?:\d+\s+)?[A-Z][A-Za-z'-]*\.?(?:\s+(?:and|of|the|[A-Z][A-Za-z'-]*\.?))*\.$")
_CAPS_WORD = re.compile(r"[A-Z]{2}")
MAX_HEADING_CHARS = 40


# ---- lines of dialogue ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Line:
    """One dialogue line: its text (heading dropped, stage directions cut, stripped), the index of its
    line in ``work.text.split("\\n")``, and the scene it belongs to (0, 1, ... in the order of the play)."""
    text: str
    line_no: int
    scene: int


def is_scene_heading(line: str) -> bool:
    """True for "ACT I.", "ACT FIRST", "SCENE II. A room in the palace.", "Scene IV. The platform."."""
    return bool(_SCENE.match(line.strip()))


def is_speaker_heading(line: str) -> bool:
    """True for a speaker's name on a line of its own: all capitals with a word of two letters or more
    ("MACBETH.", "LADY MACBETH", "FIRST WITCH."; not "O! O! O!") or capitalised words ending in a full
    stop ("Ham.", "Lady Capulet.", "1 Clown.", "Mar. and Ber."; not "I."); at most 40 characters."""
    s = line.strip()
    if not s or len(s) > MAX_HEADING_CHARS:
        return False
    return _is_caps_heading(s) or (bool(_MIXED_CASE_SPEAKER.match(s)) and sum(c.isalpha() for c in s) >= 2)


def _is_caps_heading(s: str) -> bool:
    return len(s) <= MAX_HEADING_CHARS and s == s.upper() and bool(_CAPS_WORD.search(s))


def _paragraphs(lines, first):
    """Runs of non-blank lines from index ``first``: lists of (line index, text)."""
    para = []
    for i in range(first, len(lines)):
        if lines[i].strip():
            para.append((i, lines[i]))
        elif para:
            yield para
            para = []
    if para:
        yield para


class _StageDirections:
    """Cuts [bracketed] text out of successive lines; brackets nest ("[IMOGEN in bed [reading]]") and may
    span lines, even a blank one, but one left open for more than ``MAX_OPEN_LINES`` lines is a typo
    and is closed."""
    MAX_OPEN_LINES = 6

    def __init__(self):
        self.depth, self.open_lines = 0, 0

    def cut(self, line: str) -> str:
        if self.depth:
            self.open_lines += 1
            if self.open_lines > self.MAX_OPEN_LINES:
                self.depth = 0
        kept = []
        for ch in line:
            if ch == "[":
                if not self.depth:
                    self.open_lines = 0
                self.depth += 1
            elif ch == "]":
                self.depth = max(0, self.depth - 1)
            elif not self.depth:
                kept.append(ch)
        return " ".join("".join(kept).split())


def dialogue_lines(work: Work, skip_fraction: float = SKIP_FRACTION) -> list[Line]:
    """The play's dialogue lines in order (see the module docstring for the rules).

    The first ``skip_fraction`` of the text is skipped, from the first paragraph that starts after it.
    Dropped: ACT / SCENE paragraphs (they start a new scene), speaker headings (any all-capitals one;
    a capitalised-words one where a speech starts: first in its paragraph or after a line that was all
    stage direction), [stage directions], and lines left without a letter.
    """
    lines = work.text.split("\n")
    offsets = np.cumsum([0] + [len(s) + 1 for s in lines[:-1]])
    skip = math.ceil(len(work.text) * skip_fraction)
    first = int(np.searchsorted(offsets, skip))
    while 0 < first < len(lines) and lines[first - 1].strip():      # move on to a paragraph start
        first += 1
    out: list[Line] = []
    scene = 0
    directions = _StageDirections()
    for para in _paragraphs(lines, first):
        if not directions.depth and is_scene_heading(para[0][1]):
            scene += 1
            continue
        speech_starts = True
        for i, raw in para:
            s = directions.cut(raw)
            if not any(c.isalpha() for c in s):
                speech_starts = speech_starts or not s       # a line of stage direction: a speaker may follow
                continue
            if _is_caps_heading(s) or (speech_starts and is_speaker_heading(s)):
                speech_starts = False
                continue
            speech_starts = False
            out.append(Line(s, i, scene))
    return out


# ---- the task -------------------------------------------------------------------------------------------
@dataclass
class PairTask:
    """Balanced (A, B, label) pairs on two sides.  ``train_info`` / ``test_info`` say where each pair
    comes from: {"play": A's play, "a_lines": [line_no, ...] of A's lines, "b_play": B's play,
    "b_line": B's line_no} (line numbers index ``work.text.split("\\n")``)."""
    train_a: list[str]
    train_b: list[str]
    train_labels: np.ndarray
    test_a: list[str]
    test_b: list[str]
    test_labels: np.ndarray
    train_plays: list[str]
    test_plays: list[str]
    train_info: list[dict] = field(repr=False, default_factory=list)
    test_info: list[dict] = field(repr=False, default_factory=list)
    split: str = "by play"
    max_chars: int = 120
    labels: tuple[str, ...] = PAIR_LABELS

    def pairs(self, side: str = "train") -> list[tuple[str, str]]:
        """[(A, B), ...] of one side: the items ``WordPieceTokenizer.encode_batch`` takes for pairs."""
        if side not in ("train", "test"):
            raise ValueError(f"side must be 'train' or 'test', got {side!r}")
        a, b = (self.train_a, self.train_b) if side == "train" else (self.test_a, self.test_b)
        return list(zip(a, b))

    def summary(self) -> str:
        def counts(y):
            n = np.bincount(y, minlength=2)
            return f"{int(n[1])} next / {int(n[0])} not next"
        return (f"pair task (next-line prediction, A ≤ {self.max_chars} chars, split {self.split})\n"
                f"  train: {len(self.train_a)} pairs ({counts(self.train_labels)}) from "
                f"{len(self.train_plays)} plays\n"
                f"  test:  {len(self.test_a)} pairs ({counts(self.test_labels)}) from {len(self.test_plays)} "
                f"plays: {'; '.join(self.test_plays)}")


def _candidates(plays_lines, max_chars):
    """For one side: per play, the A runs (start, end) whose next line (end) is in the same scene and
    short enough, and the lines short enough to be a B."""
    out = []
    for lines in plays_lines:
        n = len(lines)
        lengths = np.array([len(x.text) for x in lines], dtype=np.int64)
        runs = []
        for i in range(n):
            if lengths[i] > max_chars:
                continue
            j, total = i + 1, lengths[i]
            while j < n and lines[j].scene == lines[i].scene and total + 1 + lengths[j] <= max_chars:
                total += 1 + lengths[j]
                j += 1
            # A = lines[i:j]; a positive B is lines[j], in the same scene and at most max_chars long
            if j < n and lines[j].scene == lines[i].scene and lengths[j] <= max_chars:
                runs.append((i, j))
        short = np.flatnonzero(lengths <= max_chars)
        out.append((runs, short))
    return out


def _side(titles, plays_lines, n_pairs, max_chars, rng):
    """n_pairs // 2 positives and as many negatives from one side's plays, shuffled."""
    if n_pairs < 2:
        raise ValueError(f"need at least 2 pairs on each side (one of each label), got {n_pairs}")
    if len(plays_lines) < 2:
        raise ValueError(f"a side needs at least 2 plays to draw negatives from another play; got {titles}")
    cands = _candidates(plays_lines, max_chars)
    where = [(p, k) for p, (runs, _) in enumerate(cands) for k in range(len(runs))]
    n_each = n_pairs // 2
    if len(where) < n_each:
        raise ValueError(f"only {len(where)} A candidates on this side ({titles}), {n_each} asked for "
                         "per label; ask for fewer pairs or a larger max_chars")
    items = []
    for label in (1, 0):
        for idx in rng.choice(len(where), size=n_each, replace=False):
            p, k = where[int(idx)]
            i, j = cands[p][0][k]
            lines = plays_lines[p]
            a = "\n".join(x.text for x in lines[i:j])
            info = {"play": titles[p], "a_lines": [x.line_no for x in lines[i:j]]}
            if label == 1:
                q, b_line = p, lines[j]
            else:                                  # a short line of another play on this side
                others = [q for q in range(len(plays_lines)) if q != p and len(cands[q][1])]
                q = others[int(rng.integers(len(others)))]
                b_line = plays_lines[q][int(cands[q][1][int(rng.integers(len(cands[q][1])))])]
            info.update(b_play=titles[q], b_line=b_line.line_no)
            items.append((a, b_line.text, label, info))
    order = rng.permutation(len(items))
    items = [items[int(k)] for k in order]
    return ([a for a, _, _, _ in items], [b for _, b, _, _ in items],
            np.array([lab for _, _, lab, _ in items], dtype=np.int64), [inf for _, _, _, inf in items])


def pair_task(corpus: Corpus | None = None, n_test_per_genre: int = 3, max_chars: int = 120,
              train_pairs: int = 4000, test_pairs: int = 1000, seed: int = 0) -> PairTask:
    """Next-line pairs, split by play with ``split_plays(corpus, n_test_per_genre, seed)`` (the genre
    task's held-out plays).  ``train_pairs`` / ``test_pairs`` pairs per side, half of each label (an odd
    count is rounded down).  ``corpus=None`` loads Shakespeare (downloaded once; for a run without the
    network see :func:`pair_task_within_plays`)."""
    if max_chars < 10:
        raise ValueError(f"max_chars must be at least 10, got {max_chars}")
    if corpus is None:
        from .shakespeare import load_shakespeare
        corpus = load_shakespeare()
    split = split_plays(corpus, n_test_per_genre=n_test_per_genre, seed=seed)
    rng = np.random.default_rng(seed)
    sides = {}
    for side, n in (("train", train_pairs), ("test", test_pairs)):
        works = split[side]
        sides[side] = _side([w.title for w in works], [dialogue_lines(w) for w in works], n, max_chars, rng)
    (tra, trb, trl, tri), (tea, teb, tel, tei) = sides["train"], sides["test"]
    return PairTask(tra, trb, trl, tea, teb, tel, [w.title for w in split["train"]],
                    [w.title for w in split["test"]], tri, tei, split="by play", max_chars=max_chars)


def pair_task_within_plays(corpus: Corpus | None = None, train_fraction: float = 0.8, max_chars: int = 120,
                           train_pairs: int = 1000, test_pairs: int = 200, seed: int = 0) -> PairTask:
    """Next-line pairs for a corpus with too few plays to split by play (the packaged sample, the
    default): each play's dialogue lines are cut at ``train_fraction`` — the first part for training,
    the rest for testing (no pair crosses the cut) — and negatives come from the other plays' parts on
    the same side.  Train and test share plays: for lessons and CI only (see the module docstring)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if max_chars < 10:
        raise ValueError(f"max_chars must be at least 10, got {max_chars}")
    if corpus is None:
        from .sample import load_sample
        corpus = load_sample()
    plays = [w for w in corpus.works if w.genre in GENRE_LABELS]
    if len(plays) < 2:
        raise ValueError(f"need at least 2 plays to draw negatives from another play; the corpus has "
                         f"{[w.title for w in plays]}")
    parts = {"train": [], "test": []}
    for w in plays:
        lines = dialogue_lines(w)
        cut = int(round(len(lines) * train_fraction))
        parts["train"].append(lines[:cut])          # two separate lists: no A run or positive crosses the cut
        parts["test"].append(lines[cut:])
    rng = np.random.default_rng(seed)
    titles = [w.title for w in plays]
    tra, trb, trl, tri = _side(titles, parts["train"], train_pairs, max_chars, rng)
    tea, teb, tel, tei = _side(titles, parts["test"], test_pairs, max_chars, rng)
    return PairTask(tra, trb, trl, tea, teb, tel, titles, titles, tri, tei,
                    split=f"within plays ({train_fraction:.0%} / {1 - train_fraction:.0%} of each play's lines)",
                    max_chars=max_chars)
