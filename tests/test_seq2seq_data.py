"""BART's data (minilm.data.seq2seq): special ids, denoising documents and batches (shapes, padding,
seeding, exact resume), the punctuation-restoration task and its split, its metrics on hand-made
lines with known numbers, and its two baselines."""
import json
import re

import numpy as np
import pytest

from minilm.data import dialogue_lines, load_sample, split_plays
from minilm.data.corpus import Corpus
from minilm.data.seq2seq import (SPECIAL_TOKENS, DenoisingBatches, RuleCapitaliser, Seq2SeqBatches, Seq2SeqVocab,
                                 case_accuracy, character_error_rate, collate_seq2seq, copy_baseline, exact_match,
                                 levenshtein, line_words, punctuation_events, punctuation_prf, punctuation_task,
                                 restoration_scores, speech_documents, strip_punctuation)
from minilm.tokenizers import ByteLevelBPE


@pytest.fixture(scope="module")
def plays():
    return [w for w in load_sample().works if w.genre != "poetry"]


@pytest.fixture(scope="module")
def vocab(plays):
    return Seq2SeqVocab(ByteLevelBPE.train(plays[0].text[:60_000], vocab_size=400))


@pytest.fixture(scope="module")
def docs(plays, vocab):
    return speech_documents(plays, vocab, max_tokens=48)


@pytest.fixture(scope="module")
def six_plays(plays):
    """Each sample play cut at paragraph breaks into three 'plays', so every genre has two and
    split_plays can hold one of each out."""
    genres = {0: ("tragedy", "history", "comedy"), 1: ("comedy", "tragedy", "history")}
    works = []
    for p, w in enumerate(plays):
        text, parts, start = w.text, [], 0
        for third in (1, 2):
            cut = text.index("\n\n", len(text) * third // 3)
            parts.append(text[start:cut])
            start = cut + 2
        parts.append(text[start:])
        works += [(f"{w.title} {k + 1}", genres[p][k], part) for k, part in enumerate(parts)]
    return Corpus(works, name="six")


def noisy_batches(docs, vocab, **kw):
    args = dict(kinds=("text_infilling", "sentence_permutation"), mask_id=vocab.mask_id, end_ids=vocab.end_ids(),
                batch_size=6, pad_id=vocab.pad_id, seed=3)
    return DenoisingBatches(docs, **{**args, **kw})


def same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---- special ids and documents ----------------------------------------------------------------------------

def test_vocab_appends_missing_specials_and_reuses_known_ones(plays, vocab):
    assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.mask_id) == (400, 401, 402, 403)
    assert vocab.vocab_size == 404 and vocab.appended == 4
    own = Seq2SeqVocab(ByteLevelBPE.train(plays[0].text[:20_000], 300, special_tokens=SPECIAL_TOKENS))
    assert own.appended == 0 and own.vocab_size == 300
    assert [own.bos_id, own.pad_id, own.eos_id, own.mask_id] == [own.tokenizer.special_ids[s] for s in SPECIAL_TOKENS]
    assert vocab.config_ids() == {"pad_token_id": 401, "bos_token_id": 400, "eos_token_id": 402,
                                  "decoder_start_token_id": 402}


def test_encode_frames_and_decode_stops_at_eos(vocab):
    ids = vocab.encode("Fair is foul, and foul is fair.")
    assert ids.dtype == np.int64 and ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert vocab.decode(ids) == "Fair is foul, and foul is fair."
    generated = np.r_[vocab.eos_id, ids[:4], vocab.mask_id, ids[4:], vocab.pad_id, vocab.pad_id]
    assert vocab.decode(generated) == vocab.decode(ids[:4]) + "<mask>" + vocab.decode(ids[4:])
    assert vocab.decode(generated, keep_mask=False) == "Fair is foul, and foul is fair."
    assert len(vocab.encode("x" * 100, max_len=10)) == 10


def test_speech_documents_are_framed_short_and_made_of_dialogue_lines(plays, vocab, docs):
    lines = {x.text for w in plays for x in dialogue_lines(w)}
    assert len(docs) > 1000
    assert all(d[0] == vocab.bos_id and d[-1] == vocab.eos_id and len(d) <= 48 for d in docs)
    for d in docs[::50]:
        text = vocab.decode(d)
        assert all(line in lines or len(vocab.tokenizer.encode(line)) == 46 for line in text.split("\n"))
    scenes = speech_documents(plays, vocab, max_tokens=48, unit="scene")
    assert len(scenes) < len(docs) and np.mean([len(d) for d in scenes]) > np.mean([len(d) for d in docs])


def test_end_ids_and_word_start(vocab):
    ends = {vocab.token_bytes(int(i)) for i in vocab.end_ids()}
    assert {b".", b"?", b"!"} <= ends and not any(re.search(rb"[A-Za-z0-9]", b) for b in ends)
    ws = vocab.word_start()
    assert ws.shape == (vocab.vocab_size,) and ws[vocab.mask_id] and ws[ord(",")] and not ws[ord("a")]
    assert ws[vocab.tokenizer.encode(" the")[0]]


# ---- batches ---------------------------------------------------------------------------------------------

def test_denoising_batch_shapes_padding_and_targets(vocab, docs):
    doc_set = {tuple(d) for d in docs}
    masked = 0
    for batch in (noisy_batches(docs, vocab)() for _ in range(1)):
        x, m, y = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert x.dtype == m.dtype == y.dtype == np.int64 and x.shape == m.shape and len(y) == len(x) == 6
        for b in range(6):
            n, t = int(m[b].sum()), int((y[b] != -100).sum())
            assert m[b, :n].all() and not m[b, n:].any() and (x[b, n:] == vocab.pad_id).all()
            assert (y[b, :t] != -100).all() and (y[b, t:] == -100).all()
            assert tuple(y[b, :t]) in doc_set                                    # the target is a document
            assert x[b, 0] == vocab.bos_id and x[b, n - 1] == vocab.eos_id       # ends kept
            masked += int((x[b, :n] == vocab.mask_id).sum())
        assert m.sum(1).max() == x.shape[1] and (y != -100).sum(1).max() == y.shape[1]   # padded to the longest
    assert masked > 0


def test_no_noise_control_is_the_identity(vocab, docs):
    batch = noisy_batches(docs, vocab, kinds="none")()
    y = batch["labels"]
    assert np.array_equal(np.where(y == -100, vocab.pad_id, y), batch["input_ids"])
    assert np.array_equal(batch["attention_mask"], (y != -100).astype(np.int64))


def test_same_seed_same_batches_and_exact_resume(vocab, docs):
    a, b = noisy_batches(docs, vocab), noisy_batches(docs, vocab)
    for _ in range(3):
        assert same(a(), b())
    assert not same(noisy_batches(docs, vocab, seed=4)(), noisy_batches(docs, vocab)())
    state = json.loads(json.dumps(a.state_dict()))                  # a checkpoint is JSON
    expected = [a() for _ in range(2)]
    resumed = noisy_batches(docs, vocab, seed=99)
    resumed.load_state_dict(state)
    assert all(same(e, resumed()) for e in expected) and resumed.batches_drawn == 5
    with pytest.raises(ValueError, match="batch_size"):
        noisy_batches(docs, vocab, batch_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match="kinds"):
        noisy_batches(docs, vocab, kinds="text_infilling").load_state_dict(state)


def test_denoising_batches_refuse_bad_settings(vocab, docs):
    with pytest.raises(ValueError, match="unknown noise"):
        noisy_batches(docs, vocab, kinds="shuffle")
    with pytest.raises(ValueError, match="mask_id"):
        noisy_batches(docs, vocab, mask_id=None)
    with pytest.raises(ValueError, match="document 0"):
        noisy_batches([np.array([1.5, 2.0])], vocab)


def test_collate_cuts_keeping_eos_and_pads_to_max():
    out = collate_seq2seq([np.arange(10), np.arange(3)], [np.arange(4), np.arange(7)], pad_id=99,
                          max_source_len=5, max_target_len=6)
    assert out["input_ids"].tolist() == [[0, 1, 2, 3, 9], [0, 1, 2, 99, 99]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert out["labels"].tolist() == [[0, 1, 2, 3, -100, -100], [0, 1, 2, 3, 4, 6]]
    fixed = collate_seq2seq([np.arange(3)], [np.arange(3)], pad_id=0, max_source_len=8, max_target_len=9,
                            pad_to_max=True)
    assert fixed["input_ids"].shape == (1, 8) and fixed["labels"].shape == (1, 9)


def test_pair_batches_resume(vocab):
    sources = [vocab.encode(s) for s in ("to be or not", "o my lord", "ay")]
    targets = [vocab.encode(s) for s in ("To be, or not", "O, my lord!", "Ay.")]
    a = Seq2SeqBatches(sources, targets, batch_size=4, pad_id=vocab.pad_id, seed=1)
    a()
    state = a.state_dict()
    nxt = a()
    b = Seq2SeqBatches(sources, targets, batch_size=4, pad_id=vocab.pad_id, seed=0)
    b.load_state_dict(state)
    assert same(b(), nxt)
    for s, t in zip(nxt["input_ids"], nxt["labels"]):                     # pairs stay paired
        k = [tuple(x) for x in sources].index(tuple(s[s != vocab.pad_id]))
        assert np.array_equal(t[t != -100], targets[k])


# ---- the punctuation task ----------------------------------------------------------------------------------

def test_strip_punctuation_and_events():
    assert strip_punctuation("Is this a dagger which I see before me,") == "is this a dagger which i see before me"
    assert strip_punctuation("'Tis good-night, i' the  morn.--O'er!") == "tis good night i the morn o'er"
    assert line_words("O'er the hills; 'tis 1623.") == ["O'er", "the", "hills", "tis", "1623"]
    assert punctuation_events("Ay, sir?—") == {(1, ","): 1, (2, "?"): 1, (2, "—"): 1}
    assert punctuation_events("'Tis so.--") == {(0, "'"): 1, (2, "."): 1, (2, "-"): 2}
    assert punctuation_events("no marks here") == {}


def test_task_sources_are_lower_case_without_punctuation(six_plays):
    task = punctuation_task(six_plays, n_test_per_genre=1)
    assert len(task.train_targets) > 1000 and len(task.test_targets) > 500
    for src, tgt in zip(task.train_sources + task.test_sources, task.train_targets + task.test_targets):
        assert src == strip_punctuation(tgt) and src == src.lower() and src.split() == [w.lower() for w in line_words(tgt)]
        assert re.fullmatch(r"[^\W_]+(?:'[^\W_]+)*(?: [^\W_]+(?:'[^\W_]+)*)*", src), src
        assert tgt == tgt.strip() and len(tgt) <= task.max_chars and any(c.isalpha() for c in tgt)
    assert len(set(task.train_targets)) == len(task.train_targets)          # deduplicated within a side
    assert len(punctuation_task(six_plays, n_test_per_genre=1, dedupe=False).train_targets) > len(task.train_targets)


def test_task_split_holds_out_whole_plays(six_plays):
    task = punctuation_task(six_plays, n_test_per_genre=1, seed=2)
    split = split_plays(six_plays, n_test_per_genre=1, seed=2)
    assert task.test_plays == [w.title for w in split["test"]] and len(task.test_plays) == 3
    assert not set(task.train_plays) & set(task.test_plays)
    assert {p for p, _ in task.train_info} <= set(task.train_plays)
    assert {p for p, _ in task.test_info} == set(task.test_plays)
    test_lines = {x.text for w in split["test"] for x in dialogue_lines(w)}
    train_lines = {x.text for w in split["train"] for x in dialogue_lines(w)}
    assert set(task.test_targets) <= test_lines
    assert not set(task.train_targets) - train_lines                       # no train line from a test play only
    small = punctuation_task(six_plays, n_test_per_genre=1, seed=2, train_lines=100, test_lines=50)
    assert len(small.train_targets) == 100 and len(small.test_targets) == 50
    assert set(small.train_info) <= set(task.train_info)
    assert "test:" in task.summary()


# ---- metrics -----------------------------------------------------------------------------------------------

def dp_levenshtein(a, b):
    """The textbook O(|a||b|) table, to check the bit-parallel one against."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_levenshtein_known_values_and_against_the_table():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3 and levenshtein("same", "same") == 0
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = "".join(rng.choice(list("ab, ."), size=rng.integers(0, 70)))
        b = "".join(rng.choice(list("ab, ."), size=rng.integers(0, 70)))
        assert levenshtein(a, b) == dp_levenshtein(a, b) == levenshtein(b, a)


def test_perfect_prediction_scores_perfectly():
    lines = ["Ay, sir.", "Fair is foul, and foul is fair:", "O, my lord!"]
    scores = restoration_scores(lines, lines)
    assert scores == {"exact_match": 1.0, "punct_precision": 1.0, "punct_recall": 1.0, "punct_f1": 1.0,
                      "cer": 0.0, "case_accuracy": 1.0}


def test_metrics_on_hand_made_lines():
    targets, preds = ["Ay, sir.", "No!"], ["Ay sir.", "No?"]
    # events: target {(1, ","), (2, ".")} and {(1, "!")}; predicted {(2, ".")} and {(1, "?")}: TP = 1
    prf = punctuation_prf(preds, targets)
    assert (prf["tp"], prf["predicted"], prf["true"]) == (1, 2, 3)
    assert prf["precision"] == pytest.approx(1 / 2) and prf["recall"] == pytest.approx(1 / 3)
    assert prf["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))      # 0.4
    assert character_error_rate(preds, targets) == pytest.approx((1 + 1) / (8 + 3))
    assert exact_match(preds + ["Yes."], targets + ["Yes."]) == pytest.approx(1 / 3)
    # a comma one word late: the events are matched by word index, so it is both a miss and a false alarm
    assert punctuation_prf(["O my, lord."], ["O, my lord."])["f1"] == pytest.approx(0.5)
    assert case_accuracy(["o, my lord."], ["O, my Lord."]) == pytest.approx(1 / 3)
    assert case_accuracy(["O lord"], ["O, my Lord."]) == pytest.approx(1 / 3)     # by index: "lord" ≠ "my"
    assert punctuation_prf(["a b"], ["a b"])["f1"] == 1.0                         # nothing to find, nothing found
    assert punctuation_prf(["a, b"], ["a b"])["f1"] == 0.0
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], ["a", "b"])


# ---- baselines -----------------------------------------------------------------------------------------------

def test_copy_baseline_and_rule_capitaliser():
    assert copy_baseline("o my lord") == "o my lord"
    rule = RuleCapitaliser().fit(["I know, my Lord.", "My lord, I pray you.", "Where is Macbeth?",
                                  "Hail, Macbeth.", "and my lord", "The lord of Glamis,"])
    assert rule.capitalise_first and rule.final == "."                       # "." ends 3 lines, "," and "?" 1
    assert rule.forms["lord"] == "lord" and rule.forms["macbeth"] == "Macbeth" and rule.forms["i"] == "I"
    assert rule("where is macbeth i pray") == "Where is Macbeth I pray."
    assert rule("unknown word") == "Unknown word."
    sources = ["i know my lord", "hail macbeth"]
    targets = ["I know, my lord.", "Hail, Macbeth!"]
    ours, copied = restoration_scores([rule(s) for s in sources], targets), restoration_scores(sources, targets)
    assert ours["cer"] < copied["cer"] and ours["case_accuracy"] == 1.0 and copied["punct_f1"] == 0.0
