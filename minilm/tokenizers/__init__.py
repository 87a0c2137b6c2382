"""Tokenizers: text <-> integer ids (§3.1 step 1, "tokenize / subword").

    from minilm.tokenizers import CharTokenizer, ByteLevelBPE, load_tokenizer

    tok = ByteLevelBPE.train(text, vocab_size=2048, special_tokens=["<|endoftext|>"])
    ids = tok.encode("To be, or not to be")     # list[int]
    tok.decode(ids)                              # "To be, or not to be"
    tok.save("tok.json"); load_tokenizer("tok.json")

``CharTokenizer``: one id per character (tiny vocabulary, long sequences).
``ByteLevelBPE``: GPT-2's byte-level BPE (any string, learned merges).
"""
from .base import TOKENIZER_TYPES, Tokenizer, load_tokenizer
from .bpe import ByteLevelBPE, SPLIT_PATTERN, split_chunks
from .char import CharTokenizer
from .wordpiece import WordPieceTokenizer

__all__ = ["Tokenizer", "CharTokenizer", "ByteLevelBPE", "load_tokenizer", "TOKENIZER_TYPES",
           "WordPieceTokenizer", "SPLIT_PATTERN", "split_chunks"]
