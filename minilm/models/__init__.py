"""Models built from minilm.nn, all called one way (:mod:`minilm.models.base`):
``out = model(input_ids, attention_mask, token_type_ids, labels)`` → out.logits, out.loss.

GPT (causal LM, Eqs. G1–G4) and a classification head on it; BERT (encoder, G2 with
segments), its masked-LM and classification heads, and the loader for all-MiniLM-L6-v2; BART (encoder–decoder,
denoising, §2.1) with its LM head and seq2seq generation."""
from .bart import Bart, BartConfig, BartForConditionalGeneration, generate_seq2seq, shift_tokens_right
from .base import Model, ModelOutput, extend_positions, pool, set_attention_pattern, to_longformer
from .bert import Bert, BertClassifier, BertConfig, BertForMaskedLM, find_minilm_l6_v2
from .classifier import GPTClassifier
from .gpt import GPT, GPTConfig, load_gpt2
from .knowledge import (EntityTable, ErnieDEAHead, ErnieEncoder, ErnieFusionLayer, KnowBertEncoder,
                        KnowledgeAttentionRecontextualization, KnowledgeClassifier, align_to_first_token,
                        dea_noise, entity_slots)
from .transe import TransE, TransEConfig, CorruptedTripleBatches, link_metrics, rank_triples, transe_loss

__all__ = ["Model", "ModelOutput", "extend_positions", "set_attention_pattern", "to_longformer", "pool",
           "GPT", "GPTConfig", "load_gpt2", "GPTClassifier",
           "Bert", "BertConfig", "BertForMaskedLM", "BertClassifier", "find_minilm_l6_v2",
           "Bart", "BartConfig", "BartForConditionalGeneration", "generate_seq2seq", "shift_tokens_right",
           "ErnieFusionLayer", "ErnieDEAHead", "ErnieEncoder", "KnowledgeAttentionRecontextualization",
           "KnowBertEncoder", "KnowledgeClassifier", "EntityTable", "align_to_first_token", "entity_slots", "dea_noise",
           "TransE", "TransEConfig", "CorruptedTripleBatches", "link_metrics", "rank_triples", "transe_loss"]
