"""The genre task: a split by play, leak-free pretraining text, passages, the poetry split, naive Bayes."""
import math

import numpy as np
import pytest

from minilm.data.corpus import Corpus
from minilm.data.genre import (GENRE_LABELS, GenreTask, NaiveBayes, genre_task, leave_one_play_out, passages,
                               poetry_split, pretraining_text, split_plays, words)
from minilm.data.shakespeare import load_shakespeare


@pytest.fixture(scope="module")
def corpus():
    try:
        return load_shakespeare()
    except Exception as e:  # no cache and no network
        pytest.skip(f"the Shakespeare corpus is not cached and could not be downloaded: {e}")


def _letter_text(letters, n_words, seed):
    """Words made only of ``letters``, so any fragment of one is still made of those letters."""
    rng = np.random.default_rng(seed)
    return " ".join("".join(rng.choice(list(letters), size=int(rng.integers(2, 7)))) for _ in range(n_words))


def toy_corpus(n_per_genre=4, letters=None, n_words=400):
    """Plays named "<genre> <i>" plus a poem; play text from ``letters[genre]`` (default: per genre)."""
    letters = letters or {"comedy": "ab", "history": "cd", "tragedy": "ef"}
    works = [(f"{g} {i}", g, _letter_text(letters[g] if isinstance(letters[g], str) else letters[g][i], n_words,
                                          seed=10 * k + i))
             for k, g in enumerate(GENRE_LABELS) for i in range(n_per_genre)]
    works.append(("Poem", "poetry", "\n".join(f"line {i} of the poem" for i in range(50))))
    return Corpus(works)


# ---- the split ----------------------------------------------------------------------------------
def test_split_on_the_real_corpus(corpus):
    split = split_plays(corpus, n_test_per_genre=3, seed=0)
    train, test = split["train"], split["test"]
    plays = {w.title for w in corpus.works if w.genre != "poetry"}
    assert len(plays) == 37
    assert {w.title for w in train}.isdisjoint({w.title for w in test})
    assert {w.title for w in train} | {w.title for w in test} == plays
    assert len(train) + len(test) == 37
    assert all(w.genre in GENRE_LABELS for w in train + test)
    assert sorted(w.genre for w in test) == sorted(GENRE_LABELS * 3)
    again = split_plays(corpus, n_test_per_genre=3, seed=0)
    assert [w.title for w in again["test"]] == [w.title for w in test]
    assert [w.title for w in split_plays(corpus, seed=1)["test"]] != [w.title for w in test]


def test_split_draws_from_plays_sorted_by_title_and_checks_its_arguments():
    toy = toy_corpus(n_per_genre=4)
    shuffled = Corpus([(w.title, w.genre, w.text) for w in reversed(toy.works)])
    a = {w.title for w in split_plays(toy, 2, seed=5)["test"]}
    assert a == {w.title for w in split_plays(shuffled, 2, seed=5)["test"]}  # corpus order does not matter
    with pytest.raises(ValueError, match="n_test_per_genre"):
        split_plays(toy, n_test_per_genre=4)  # would leave a genre with nothing to train on
    with pytest.raises(ValueError, match="n_test_per_genre"):
        split_plays(toy, n_test_per_genre=0)
    no_history = Corpus([(w.title, w.genre, w.text) for w in toy.works if w.genre != "history"])
    with pytest.raises(ValueError, match="history"):
        split_plays(no_history)


def test_pretraining_text_holds_no_test_play_and_no_poem(corpus):
    split = split_plays(corpus, seed=0)
    text = pretraining_text(corpus, split)
    for w in split["test"]:
        mid = len(w.text) // 2
        assert w.text[mid:mid + 200] not in text, w.title
    for w in corpus.works:
        if w.genre == "poetry":
            mid = len(w.text) // 2
            assert w.text[mid:mid + 200] not in text, w.title
    for w in split["train"]:
        assert w.text in text
    assert len(text) == sum(len(w.text) for w in split["train"]) + len(corpus.separator) * (len(split["train"]) - 1)
    with pytest.raises(ValueError, match="both sides"):
        pretraining_text(corpus, {"train": split["train"], "test": split["train"][:1]})


# ---- passages and the task -----------------------------------------------------------------------
def test_passages_are_exact_windows_after_the_first_five_percent():
    toy = toy_corpus(n_per_genre=2)
    plays = [w for w in toy.works if w.genre != "poetry"]
    out = passages(plays, length=50)
    by_title = {w.title: w for w in plays}
    for text, label, title in out:
        assert len(text) == 50
        assert GENRE_LABELS[label] == by_title[title].genre
        assert text in by_title[title].text
    first = plays[0]
    skip = math.ceil(0.05 * len(first.text))
    mine = [t for t, _, title in out if title == first.title]
    assert mine[0] == first.text[skip:skip + 50] and mine[1] == first.text[skip + 50:skip + 100]
    assert len(mine) == (len(first.text) - skip) // 50
    assert [title for _, _, title in out] == sorted((title for _, _, title in out),
                                                    key=[w.title for w in plays].index)  # works' order
    capped = passages(plays, length=50, per_work=3, seed=1)
    assert capped == passages(plays, length=50, per_work=3, seed=1)
    assert [sum(title == w.title for _, _, title in capped) for w in plays] == [3] * len(plays)
    assert all(p in out for p in capped)
    assert capped != passages(plays, length=50, per_work=3, seed=2)
    with pytest.raises(ValueError, match="Poem"):
        passages(toy.works, length=50)


def test_passages_of_the_real_plays(corpus):
    split = split_plays(corpus, seed=0)
    out = passages(split["test"], length=256)
    genre = {w.title: w.genre for w in corpus.works}
    assert len(out) > 1000
    assert all(len(t) == 256 and GENRE_LABELS[lab] == genre[title] for t, lab, title in out)
    assert {title for _, _, title in out} == {w.title for w in split["test"]}


def test_genre_task_is_balanced_split_by_play_and_deterministic(corpus):
    task = genre_task(corpus, length=256, seed=0)
    assert isinstance(task, GenreTask) and task.labels == GENRE_LABELS and task.length == 256
    for texts, labels in ((task.train_texts, task.train_labels), (task.test_texts, task.test_labels)):
        assert labels.dtype == np.int64 and len(labels) == len(texts)
        counts = np.bincount(labels, minlength=3)
        assert counts.min() == counts.max() > 0
        assert all(len(t) == 256 for t in texts)
    assert set(task.train_plays).isdisjoint(task.test_plays) and len(task.test_plays) == 9
    test_text = "\n".join(w.text for w in corpus.works if w.title in task.test_plays)
    assert all(t in test_text for t in task.test_texts[::50])
    again = genre_task(corpus, length=256, seed=0)
    assert again.train_texts == task.train_texts and again.test_texts == task.test_texts
    assert np.array_equal(again.train_labels, task.train_labels)
    small = genre_task(corpus, length=256, train_per_genre=100, test_per_genre=20, seed=0)
    assert np.bincount(small.train_labels).tolist() == [100] * 3
    assert np.bincount(small.test_labels).tolist() == [20] * 3
    assert "test" in task.summary() and task.test_plays[0] in task.summary()


# ---- poetry ----------------------------------------------------------------------------------------
def test_poetry_split(corpus):
    train, val = poetry_split(corpus, val_fraction=0.1)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert val not in train
    for part in val.split(corpus.separator):
        assert part[:200] not in train and part[-200:] not in train
    for poem in (w for w in corpus.works if w.genre == "poetry"):
        head = poem.text[:len(poem.text) // 2]
        assert head in train and head not in val
    with pytest.raises(ValueError, match="val_fraction"):
        poetry_split(corpus, val_fraction=1.0)


def test_poetry_split_cuts_at_a_line_break():
    toy = toy_corpus(n_per_genre=2)
    train, val = poetry_split(toy, val_fraction=0.2)
    lines = toy.works[-1].text.split("\n")
    assert train.split("\n") + val.split("\n") == lines
    assert len(val.split("\n")) == 10


# ---- naive Bayes -----------------------------------------------------------------------------------
def test_words():
    assert words("O'er the HILL, I'll go -- 'tis 2 o'clock!") == ["o'er", "the", "hill", "i'll", "go", "tis", "o'clock"]


TOY_TEXTS = ["apple apple banana", "apple cherry", "dog dog cat"]
TOY_LABELS = [0, 0, 1]


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_naive_bayes_log_joint_matches_the_formula_by_hand(alpha):
    nb = NaiveBayes(alpha=alpha).fit(TOY_TEXTS, TOY_LABELS)
    V = 5  # apple banana cherry dog cat
    # class 0: apple 3, banana 1, cherry 1 (5 words, 2 of 3 passages); class 1: dog 2, cat 1 (3 words, 1 passage)
    # "apple dog dog zebra": zebra is unknown and ignored
    c0 = math.log(2 / 3) + math.log((3 + alpha) / (5 + alpha * V)) + 2 * math.log((0 + alpha) / (5 + alpha * V))
    c1 = math.log(1 / 3) + math.log((0 + alpha) / (3 + alpha * V)) + 2 * math.log((2 + alpha) / (3 + alpha * V))
    got = nb.log_joint(["apple dog dog zebra"])
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got[0], [c0, c1], rtol=1e-12)
    post = nb.log_posterior(["apple dog dog zebra"])[0]
    np.testing.assert_allclose(post, [c0, c1] - np.logaddexp(c0, c1), rtol=1e-12)


def test_naive_bayes_predicts_ignores_unknown_words_and_keeps_label_values():
    nb = NaiveBayes().fit(TOY_TEXTS, [3, 3, 7])
    pred = nb.predict(["banana cherry apple", "cat dog", "Dog!"])
    assert pred.dtype == np.int64 and pred.shape == (3,)
    assert pred.tolist() == [3, 7, 7]
    np.testing.assert_allclose(nb.log_joint(["apple zebra quux"]), nb.log_joint(["apple"]))
    np.testing.assert_allclose(nb.log_joint(["zebra", ""]), np.log([[2 / 3, 1 / 3]] * 2))
    assert nb.score(["apple", "cat", "dog"], [3, 3, 7]) == pytest.approx(2 / 3)
    assert np.allclose(np.exp(nb.log_posterior(["apple cat", "zebra"])).sum(axis=1), 1.0)
    with pytest.raises(RuntimeError, match="fit"):
        NaiveBayes().predict(["apple"])
    with pytest.raises(ValueError, match="one label per passage"):
        NaiveBayes().fit(TOY_TEXTS, [0, 1])
    with pytest.raises(ValueError, match="alpha"):
        NaiveBayes(alpha=0)


def test_naive_bayes_on_the_real_split_beats_chance(corpus):
    task = genre_task(corpus, length=512, train_per_genre=600, test_per_genre=200, seed=0)
    nb = NaiveBayes().fit(task.train_texts, task.train_labels)
    assert nb.score(task.test_texts, task.test_labels) > 0.5  # chance is 1/3


def test_leave_one_play_out_holds_each_play_out():
    # Each genre writes with its own letters: a play is classified by the other plays of its genre.
    assert leave_one_play_out(toy_corpus(n_per_genre=2), length=40) == 1.0
    # Each play writes with its own letter: a held-out play's words are all unknown, so only the prior
    # speaks, and it favours a genre other than the held-out play's (whose count just dropped).
    # A model that had seen the held-out play would get every passage right instead.
    own = toy_corpus(n_per_genre=2, letters={"comedy": ["a", "b"], "history": ["c", "d"], "tragedy": ["e", "f"]})
    assert leave_one_play_out(own, length=40) == 0.0
