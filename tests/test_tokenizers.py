"""Tokenizers: exact round trips, BPE merges against a hand computation and a naive trainer, files, errors."""
import json
import random
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilm
from minilm.tokenizers import ByteLevelBPE, CharTokenizer, Tokenizer, load_tokenizer, split_chunks

MIXED = ("To be, or not to be: that is the question.\r\n\tWhether 'tis nobler in the mind to suffer\n"
         "The slings and arrows of outrageous fortune, or to take arms against a sea of troubles?\n"
         "生存还是毁灭，这是一个问题。 🎭🎭 café cafe\u0301 naïve ½ x² 1234 foo_bar   \n\n  end")


@pytest.fixture(scope="module")
def bpe():
    return ByteLevelBPE.train(MIXED * 3, vocab_size=400, special_tokens=["<|endoftext|>"])


# ---- character level ----------------------------------------------------------------------------
def test_char_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.decode([3, 2, 4, 4, 5]) == "hello"


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_char_round_trip(text):
    tok = CharTokenizer.train(text + "a")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    arr = tok.encode_array(text)
    assert arr.dtype in (np.int32, np.int64) and arr.tolist() == ids
    assert tok.decode(arr) == text


def test_char_unknown_characters_are_named_with_positions():
    tok = CharTokenizer.train("abc")
    for encode in (tok.encode, tok.encode_array):
        with pytest.raises(ValueError, match=r"'x' at position 1, 'é' at position 3"):
            encode("axbé")
    with pytest.raises(ValueError, match=r"and 2 more"):
        tok.encode("zzzzzzz")


def test_char_decode_out_of_range_names_the_id():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"id 7 at position 1 .* vocab_size 3"):
        tok.decode([0, 7])
    with pytest.raises(ValueError, match=r"id -1"):
        tok.decode(np.array([-1]))


def test_decode_accepts_lists_arrays_and_tensors(bpe):
    for tok in (CharTokenizer.train("hello"), bpe):
        ids = tok.encode("hello")
        for form in (ids, tuple(ids), np.array(ids, dtype=np.int32), minilm.tensor(ids)):
            assert tok.decode(form) == "hello"
        assert tok.decode([]) == ""
        with pytest.raises(ValueError, match=r"1-D"):
            tok.decode(np.array([ids, ids]))
        with pytest.raises(TypeError, match=r"integers"):
            tok.decode([1.5])


# ---- byte-level BPE: the pieces -----------------------------------------------------------------
def test_pre_split_follows_gpt2():
    assert split_chunks("I'm  fine_ok 123abc  \n\n x") == \
        ["I", "'m", " ", " fine", "_", "ok", " 123", "abc", "  \n\n", " x"]
    assert split_chunks("Hello, world!!") == ["Hello", ",", " world", "!!"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_pre_split_loses_nothing(text):
    assert "".join(split_chunks(text)) == text


def test_merges_on_a_tiny_corpus_match_a_hand_computation():
    # "aaabdaaabac" is one chunk: bytes a=97 b=98 c=99 d=100.
    # counts: aa 4, ab 2, ...        -> merge 0: (a, a) = 256  -> [256 a b d 256 a b a c]
    # (256,a) 2 ties (a,b) 2; smaller pair wins -> merge 1: (a, b) = 257 -> [256 257 d 256 257 a c]
    # (256,257) 2                    -> merge 2: 258 = "aaab"       -> [258 d 258 a c]
    # all pairs 1; smallest is (a, c) -> merge 3: 259 = "ac"        -> [258 d 258 259]
    tok = ByteLevelBPE.train("aaabdaaabac", vocab_size=260)
    assert tok.merges == [(97, 97), (97, 98), (256, 257), (97, 99)]
    assert [tok.token_bytes(i) for i in range(256, 260)] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 259]


def test_chunk_frequencies_weight_the_counts():
    # chunks " ab" x3 and " ba" x1: (32, 97) and (97, 98) both count 3, the smaller pair goes first
    tok = ByteLevelBPE.train(" ab ab ab ba", vocab_size=258)
    assert tok.merges == [(32, 97), (256, 98)]
    assert tok.encode(" ab ba") == [257, 32, 98, 97]


def test_merges_never_cross_a_chunk_boundary():
    # "y." occurs twice but "y" and "." sit in different chunks ("xy", ".")
    with pytest.warns(UserWarning, match=r"stopped after 1 of 2 merges"):
        tok = ByteLevelBPE.train("xy.xy.xy", vocab_size=258)
    assert tok.merges == [(120, 121)]


def _merge(seq, a, b, z):
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == (a, b):
            out.append(z)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def naive_train(text, n_merges):
    """Reference trainer: recount every pair of every chunk before each merge."""
    freq = Counter(split_chunks(text))
    seqs = {w: list(w.encode("utf-8")) for w in freq}
    merges = []
    for k in range(n_merges):
        counts = Counter()
        for w, f in freq.items():
            for p in zip(seqs[w], seqs[w][1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties -> smallest pair
        merges.append(best)
        for w in seqs:
            seqs[w] = _merge(seqs[w], *best, 256 + k)
    return merges, seqs


# few distinct characters, so pairs repeat and counts tie often
SMALL_TEXTS = st.text(alphabet=st.sampled_from(list("aab bc\n'dé世")), max_size=300)


@settings(max_examples=200, deadline=None)
@given(SMALL_TEXTS, st.integers(0, 60))
def test_incremental_trainer_equals_naive_trainer(text, n_merges):
    expected, seqs = naive_train(text, n_merges)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = ByteLevelBPE.train(text, vocab_size=256 + n_merges)
    assert bool(caught) == (len(expected) < n_merges)  # stopping early is announced
    assert tok.merges == expected
    # encoding replays the merges by rank: the training text comes out as the trainer left it
    assert tok.encode(text) == [i for w in split_chunks(text) for i in seqs[w]]


@pytest.mark.parametrize("alphabet", ["ab \n", "abcd e", "aab bc\n'dé世", "the cat sat on a mat. "])
def test_incremental_trainer_equals_naive_trainer_on_longer_random_texts(alphabet):
    # longer texts than hypothesis likes to draw: counts fall without reaching zero, ties abound
    rng = random.Random(alphabet)
    for _ in range(8):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(100, 600)))
        n_merges = rng.randrange(10, 80)
        expected, _ = naive_train(text, n_merges)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ByteLevelBPE.train(text, vocab_size=256 + n_merges).merges == expected


# ---- byte-level BPE: round trips ----------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_round_trip_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.encode_array(text).tolist() == ids


@pytest.mark.parametrize("text", ["", " ", "\n", "\r\n", "a\r\nb\r\n", "\t\tx\t", "   ",
                                  "生存还是毁灭", "🎭👩\u200d👩\u200d👧", "cafe\u0301 e\u0301\u0301", "'s 're",
                                  "x<|endoftext|>y", "<|endoftext|>", "<|endoftext", "\x00\x7f\u200b\ufeff", MIXED])
def test_bpe_round_trip_explicit(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_multibyte_tokens_and_compresses(bpe):
    ids = bpe.encode(MIXED)
    assert len(ids) < len(MIXED.encode("utf-8")) / 2
    learned = [bpe.token_bytes(i) for i in range(256, 256 + len(bpe.merges))]
    assert any(len(t) >= 3 and t[0] >= 0xE0 for t in learned)  # a whole CJK character or more


def test_special_tokens_are_atomic_and_last(bpe):
    eot = bpe.special_ids["<|endoftext|>"]
    assert eot == bpe.vocab_size - 1 == 399
    ids = bpe.encode("be<|endoftext|>be")
    assert ids.count(eot) == 1 and ids == bpe.encode("be") + [eot] + bpe.encode("be")
    assert bpe.decode([eot]) == "<|endoftext|>"
    plain = ByteLevelBPE.train(MIXED, vocab_size=300)  # no special tokens: just text
    assert len(plain.encode("<|endoftext|>")) > 1


def test_special_tokens_take_no_part_in_training():
    tok = ByteLevelBPE.train("<|x|><|x|><|x|>ab", vocab_size=258, special_tokens=["<|x|>"])
    assert tok.merges == [(97, 98)]  # "<|" never counted
    assert tok.encode("<|x|>ab<|x|>") == [257, 256, 257]


def test_longest_special_token_wins():
    tok = ByteLevelBPE([], special_tokens=["<a", "<ab>"])
    assert tok.encode("<ab>") == [257] and tok.encode("<a") == [256]


def test_bpe_rejects_lone_surrogates_and_bad_sizes(bpe):
    with pytest.raises(ValueError, match=r"U\+D800 at position 1"):
        bpe.encode("a\ud800")
    with pytest.raises(ValueError, match=r"vocab_size 200"):
        ByteLevelBPE.train("abc", vocab_size=200)
    with pytest.raises(ValueError, match=r"id 400 at position 1 .* vocab_size 400"):
        bpe.decode([258, 400])
    with pytest.warns(UserWarning, match=r"stopped after 1 of 10 merges"):
        ByteLevelBPE.train("ab", vocab_size=266)


def test_bpe_decode_of_a_cut_character_shows_replacement(bpe):
    ids = ByteLevelBPE().encode("é")
    assert ids == [0xC3, 0xA9] and bpe.decode(ids[:1]) == "\ufffd"


# ---- files ----------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path, bpe):
    char = CharTokenizer.train(MIXED)
    for tok in (char, bpe):
        path = tok.save(tmp_path / f"{tok.type_name}.json")
        assert json.loads(path.read_text(encoding="utf-8"))["type"] == tok.type_name
        for loaded in (load_tokenizer(path), type(tok).load(path), load_tokenizer(tok.to_dict()),
                       Tokenizer.load(path)):
            assert type(loaded) is type(tok) and loaded.to_dict() == tok.to_dict()
            assert loaded.encode(MIXED) == tok.encode(MIXED)


def test_load_errors_name_the_file(tmp_path, bpe):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_tokenizer(tmp_path / "nope.json")
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"type": "byte_bpe", "merges": [[1, 2]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"garbled\.json is not a tokenizer JSON file"):
        load_tokenizer(garbled)
    cases = {"notype.json": {"merges": []}, "unknown.json": {"type": "wordpiece9"},
             "nofield.json": {"type": "byte_bpe"}, "badmerge.json": {"type": "byte_bpe", "merges": [[1, 999]]},
             "badchars.json": {"type": "char", "chars": ["ab"]}}
    expect = {"notype.json": r"no \"type\" field", "unknown.json": r"unknown type 'wordpiece9'",
              "nofield.json": r"garbled 'byte_bpe' tokenizer: missing field 'merges'",
              "badmerge.json": r"merge 0 is \[1, 999\]", "badchars.json": r"single characters"}
    for name, d in cases.items():
        (tmp_path / name).write_text(json.dumps(d), encoding="utf-8")
        with pytest.raises(ValueError, match=expect[name]) as info:
            load_tokenizer(tmp_path / name)
        assert name in str(info.value)
    path = bpe.save(tmp_path / "bpe.json")
    with pytest.raises(ValueError, match=r"bpe\.json holds a 'byte_bpe' tokenizer, not a 'char' one"):
        CharTokenizer.load(path)
