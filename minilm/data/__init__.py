"""Data for pretraining (§3.1 step 1): collect a corpus, clean it, tokenize it, cut it into blocks.

    from minilm.data import load_shakespeare, encode_corpus, train_val_split, RandomBatches
    from minilm.tokenizers import ByteLevelBPE

    corpus = load_shakespeare()                      # downloaded once, then cached
    tok = ByteLevelBPE.train(corpus.text, vocab_size=2048)
    train, val = train_val_split(encode_corpus(corpus.text, tok))
    x, y = RandomBatches(train, block_size=256, batch_size=32, seed=0)()   # (B, T) int64, y = x shifted
"""
from .batches import BlockLoader, RandomBatches
from .corpus import (Corpus, Work, cache_root, encode_corpus, load_text, normalize_whitespace,
                     train_val_split)
from .genre import GENRE_LABELS, GenreTask, NaiveBayes, genre_task, poetry_split, split_plays
from .pairs import PairTask, dialogue_lines, pair_task, pair_task_within_plays
from .mlm import expected_span_length, find_phrases, mask_tokens, sample_span_lengths, word_starts
from .denoise import (denoising_pair, document_rotation, poisson_span_lengths, sentence_permutation,
                      text_infilling, token_deletion, token_masking)
from .sample import load_sample
from .seq2seq import (DenoisingBatches, PunctuationTask, RuleCapitaliser, Seq2SeqBatches, Seq2SeqVocab,
                      collate_seq2seq, copy_baseline, punctuation_task, restoration_scores, speech_documents,
                      strip_punctuation)
from .shakespeare import CorpusDownloadError, clean_gutenberg, load_shakespeare

__all__ = ["load_shakespeare", "load_sample", "load_text", "clean_gutenberg", "normalize_whitespace",
           "Corpus", "Work",
           "CorpusDownloadError", "cache_root", "encode_corpus", "train_val_split",
           "RandomBatches", "BlockLoader",
           "mask_tokens", "word_starts", "find_phrases", "sample_span_lengths", "expected_span_length",
           "token_masking", "token_deletion", "text_infilling", "sentence_permutation", "document_rotation",
           "poisson_span_lengths", "denoising_pair",
           "Seq2SeqVocab", "speech_documents", "collate_seq2seq", "DenoisingBatches", "Seq2SeqBatches",
           "PunctuationTask", "punctuation_task", "strip_punctuation", "restoration_scores", "copy_baseline",
           "RuleCapitaliser",
           "PairTask", "pair_task", "pair_task_within_plays", "dialogue_lines",
           "GENRE_LABELS", "GenreTask", "genre_task", "split_plays", "poetry_split", "NaiveBayes"]
