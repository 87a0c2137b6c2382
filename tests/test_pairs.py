"""The next-line pair task: what a dialogue line is, the split by play, balance, determinism, real positives."""
import re

import numpy as np
import pytest

from minilm.data import load_sample
from minilm.data.corpus import Corpus
from minilm.data.genre import GENRE_LABELS, split_plays
from minilm.data.pairs import (PairTask, dialogue_lines, is_scene_heading, is_speaker_heading, pair_task,
                               pair_task_within_plays)

PLAY = """\
Title page
and the list of characters

ACT I.

SCENE I. A heath.

[Thunder. Enter three Witches.]

FIRST WITCH.
When shall we three meet again?
    In thunder, lightning, or in rain?

SECOND WITCH. [Aside.]
When the hurlyburly's done, [Exit.]
When the battle's lost and won.

[A long direction [nested] that
runs over two lines.]

Ham.
To be, or not to be:
[Draws.] that is the question.

O! O! O!

SCENE II. Another part.

HERMIA
Take comfort; he no more shall see my face;
KING.
Farewell."""


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def test_headings():
    for s in ("MACBETH.", "LADY MACBETH", "FIRST WITCH.", "Ham.", "Lady Capulet.", "1 Clown.", "Mar. and Ber.",
              "P. Queen."):
        assert is_speaker_heading(s), s
    for s in ("O! O! O!", "I.", "So, proceed you.", "What does this mean, my lord?", "Hail!", "", "x" * 50):
        assert not is_speaker_heading(s), s
    assert is_scene_heading("ACT I.") and is_scene_heading("Scene IV. The platform.")
    assert not is_scene_heading("Actually, no.")


def test_dialogue_lines_drop_headings_and_stage_directions():
    corpus = Corpus([("Play", "tragedy", PLAY)])
    lines = dialogue_lines(corpus.works[0], skip_fraction=0.0)
    assert [x.text for x in lines] == [
        "Title page", "and the list of characters",
        "When shall we three meet again?", "In thunder, lightning, or in rain?",
        "When the hurlyburly's done,", "When the battle's lost and won.",
        "To be, or not to be:", "that is the question.", "O! O! O!",
        "Take comfort; he no more shall see my face;", "Farewell."]
    assert [x.scene for x in lines] == [0, 0, 2, 2, 2, 2, 2, 2, 2, 3, 3]
    raw = PLAY.split("\n")
    for x in lines:                                  # line_no points at the raw line the text came from
        assert x.text.split()[0] in raw[x.line_no]
    skipped = dialogue_lines(corpus.works[0])        # the first 5% (title page) skipped, from a paragraph start
    assert skipped[0].text == "When shall we three meet again?"


def _check_positives(task, corpus, side):
    """Every label-1 pair: B is the dialogue line right after A's last line, in the same play and scene,
    and in the raw text only blank lines, headings and stage directions lie between them."""
    works = {w.title: w for w in corpus.works}
    cache = {}

    def lines_of(title):
        if title not in cache:
            cache[title] = dialogue_lines(works[title])
        return cache[title]

    a_texts, b_texts, labels, infos = ((task.train_a, task.train_b, task.train_labels, task.train_info)
                                       if side == "train" else
                                       (task.test_a, task.test_b, task.test_labels, task.test_info))
    n_pos = 0
    for a, b, label, info in zip(a_texts, b_texts, labels, infos):
        lines = lines_of(info["play"])
        index = {x.line_no: k for k, x in enumerate(lines)}
        ks = [index[n] for n in info["a_lines"]]
        assert ks == list(range(ks[0], ks[0] + len(ks)))                    # A: consecutive lines
        assert a == "\n".join(lines[k].text for k in ks) and len(a) <= task.max_chars
        assert len(b) <= task.max_chars
        if label == 1:
            n_pos += 1
            assert info["b_play"] == info["play"]
            kb = index[info["b_line"]]
            assert kb == ks[-1] + 1 and lines[kb].text == b                   # B: the very next line
            assert lines[kb].scene == lines[ks[0]].scene
            raw = works[info["play"]].text.split("\n")
            for between in raw[info["a_lines"][-1] + 1:info["b_line"]]:
                s = between.strip()
                assert not s or s.startswith("[") or s.endswith("]") or is_speaker_heading(s), between
            assert " ".join(b.split()[:2]) in " ".join(raw[info["b_line"]].split())
        else:
            assert info["b_play"] != info["play"]                              # from another play
            assert b in {x.text for x in lines_of(info["b_play"])}
    assert n_pos == len(labels) // 2


def test_within_plays_on_the_sample(sample):
    task = pair_task_within_plays(sample, train_pairs=300, test_pairs=100, seed=0)
    assert isinstance(task, PairTask)
    assert task.train_plays == task.test_plays == ["Macbeth", "A Midsummer Night's Dream"]   # no poem
    for side, n in (("train", 300), ("test", 100)):
        labels = task.train_labels if side == "train" else task.test_labels
        assert len(task.pairs(side)) == n and np.bincount(labels).tolist() == [n // 2, n // 2]
        _check_positives(task, sample, side)
    # the 80/20 cut: every train line comes before every test line of the same play
    for title in task.train_plays:
        lines = dialogue_lines(next(w for w in sample.works if w.title == title))
        cut = lines[int(round(0.8 * len(lines)))].line_no
        for info in task.train_info:
            used = (info["a_lines"] if info["play"] == title else []) + \
                   ([info["b_line"]] if info["b_play"] == title else [])
            assert all(n < cut for n in used)
        for info in task.test_info:
            used = (info["a_lines"] if info["play"] == title else []) + \
                   ([info["b_line"]] if info["b_play"] == title else [])
            assert all(n >= cut for n in used)
    assert "within plays" in task.summary()


def test_determinism(sample):
    a = pair_task_within_plays(sample, train_pairs=60, test_pairs=20, seed=3)
    b = pair_task_within_plays(sample, train_pairs=60, test_pairs=20, seed=3)
    c = pair_task_within_plays(sample, train_pairs=60, test_pairs=20, seed=4)
    assert a.pairs("train") == b.pairs("train") and a.pairs("test") == b.pairs("test")
    assert np.array_equal(a.train_labels, b.train_labels) and a.train_info == b.train_info
    assert a.pairs("train") != c.pairs("train")
    assert 0 < a.train_labels[:20].sum() < 20           # shuffled: the labels are not in two blocks


def _toy_plays(sample, n_per_genre=3):
    """3 "plays" per genre cut from the sample's two plays (at scene headings), so split_plays works offline."""
    pieces = []
    for w in (x for x in sample.works if x.genre != "poetry"):
        scenes = re.split(r"\n(?=SCENE )", w.text)
        n = (3 * n_per_genre + 1) // 2                  # pieces of this play
        bounds = np.linspace(0, len(scenes), n + 1).astype(int)
        pieces += ["\n".join(scenes[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    works = [(f"{g} {i}", g, pieces[k * n_per_genre + i]) for k, g in enumerate(GENRE_LABELS)
             for i in range(n_per_genre)]
    works.append(("Sonnets", "poetry", sample.works[-1].text))
    return Corpus(works)


def test_split_by_play_is_the_genre_split(sample):
    corpus = _toy_plays(sample)
    task = pair_task(corpus, n_test_per_genre=1, train_pairs=200, test_pairs=60, seed=1)
    split = split_plays(corpus, n_test_per_genre=1, seed=1)
    assert task.train_plays == [w.title for w in split["train"]]
    assert task.test_plays == [w.title for w in split["test"]]
    assert not set(task.train_plays) & set(task.test_plays) and "Sonnets" not in task.train_plays + task.test_plays
    for infos, plays in ((task.train_info, task.train_plays), (task.test_info, task.test_plays)):
        assert {i["play"] for i in infos} | {i["b_play"] for i in infos} <= set(plays)   # nothing crosses sides
    assert np.bincount(task.train_labels).tolist() == [100, 100]
    assert np.bincount(task.test_labels).tolist() == [30, 30]
    _check_positives(task, corpus, "train")
    _check_positives(task, corpus, "test")


def test_errors(sample):
    with pytest.raises(ValueError, match="train_fraction"):
        pair_task_within_plays(sample, train_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 plays"):
        pair_task_within_plays(Corpus([("Macbeth", "tragedy", sample.works[0].text)]))
    with pytest.raises(ValueError, match="A candidates"):
        pair_task_within_plays(sample, train_pairs=10 ** 6)
    with pytest.raises(ValueError, match="side must be"):
        pair_task_within_plays(sample, train_pairs=10, test_pairs=4).pairs("val")
