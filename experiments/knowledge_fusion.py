#!/usr/bin/env python
"""Does knowledge help?  Who speaks next in a play: a frozen MiniLM alone, with ERNIE's fusion, with KnowBERT's KAR,
against the knowledge graph alone (issue 16, "Must show").

    python experiments/knowledge_fusion.py --estimate        # time a few steps of every row at full size; the plan
    python experiments/knowledge_fusion.py                   # every row x 3 seeds (~60 min of one core, Time below)
    python experiments/knowledge_fusion.py --grid-every-seed # the lr grid at every seed, not only seed 0 (~100 min)
    python experiments/knowledge_fusion.py --report          # the table and the plot from the runs there
    python experiments/knowledge_fusion.py --quick           # a tiny subset, a few steps (the mechanics only, ~40 s)

**Task: who speaks next.**  An example is two consecutive speeches of one scene, both by single resolved
speakers (``Play.speeches``: a character of the persons list or an anonymous role; joint, group and
unresolved headings break the pair, as they break ``speaks_to``).  Input: the previous speaker's name, the
previous speech, and the current speech with its heading removed,

    [CLS] Horatio : <previous speech, its last tokens> [SEP] <current speech, its first tokens> [SEP]

(segments 0 / 1, at most 128 WordPiece tokens; stage directions in [brackets] stay, as a reader sees them).
Label: the current speaker, chosen among the candidates = the persons-list characters of the play and the
roles (anonymous speakers) that speak in a graph or train scene, minus the previous speaker.  Examples whose
speaker is not a candidate (a role met only in held-out scenes; a speaker who follows himself) are dropped
and counted.  Why this task: the graph knows who talks with whom (speaks_to, appears_in counts) and who is
whose servant, son, wife (the persons list), but not what is said; the text knows what is said (a vocative,
"madam", "my lord", "[Enter Horatio]") but not who the names are.  Neither decides alone.  Why every
character of the play and not only those speaking in the scene: the scene's speaker list is read off the
scene's own headings, the labels of the neighbouring examples; the play's persons list is known in advance.
The relation task ("what is the relation between the two characters a passage names") was set aside: its
labels are the persons-list triples themselves (373 triples over 37 plays), too few to train on and, split
by pair, unknowable from the graph by construction.

**Split, by scene.**  Every play's scenes are permuted (seed 0) and dealt out: 15% test, 7% validation,
25% train, the remaining 53% *graph* scenes (at least one test, validation and train scene a play), so each
play has held-out scenes and its characters are known.  The knowledge graph is ``build_knowledge_graph``
over the plays with only their graph scenes' speeches (``dataclasses.replace(play, speeches=...)``: whole
scenes, so speaks_to adjacency is intact, and nothing is adjacent across scenes anyway).  No example of
any split comes from a graph scene, so a training example's own adjacency is never in the graph: train,
validation and test examples all meet the graph as unseen scenes do (a graph built from the training scenes
would hold every training label as a speaks_to count, and a model would learn to trust counts that at test
time say nothing about the test pair).  The persons-list relations (kinship, service, love, titles) come
from the list, which precedes the text, and are in the graph for every play.  Entity linking
(``link_mentions``) runs on a play whose speeches are the graph scenes' too (its alias table breaks ties
by the play's speech headings).  Checks, asserted at every run: the graph's appears_in and speaks_to counts
equal those recounted from the graph scenes alone; every example's scene is of its own split (none a graph
scene); the current speech's text starts below its heading line.  Not a leak but worth knowing: the graph summarises ~15,000 adjacencies of the
graph scenes, while the text models train on 4,000 examples, so the knowledge is partly "more data,
pre-digested", as in ERNIE and KnowBERT (whose graphs are built from other text).

**Rows** (the neural rows all read the same frozen all-MiniLM-L6-v2 and score candidates with the same
scorer; they differ only in what sits between the base and the pooled vector):

  prior            the candidate with the most speeches in the graph scenes (appears_in count)
  graph rule       the candidate with the most speaks_to adjacencies with the previous speaker, ties by prior
  graph only       a conditional logit on graph look-ups of the linked entities, fitted on the train
                   examples (L2 strength chosen on validation): per candidate k, log(1 + speaks_to(prev, k)),
                   log(1 + appears_in(k)), k linked in the previous / current speech, log(1 + the summed
                   speaks_to of k with the other entities linked there), a persons-list relation between prev
                   and k, k a role.  No words: the knowledge-only baseline.
  text, names only the probe below with the candidates' TransE part zeroed: no graph anywhere
  text (probe)     the readout h of the frozen MiniLM's last states -> scorer
  text + top layer an ErnieFusionLayer on the frozen last states fed NO entities (w + MH-ATT(w), the fusion
                   MLP on tokens alone): the same trainable layer as the ERNIE row, the capacity control
  + ERNIE          the same layer fed the TransE vectors of the linked entities, each aligned to the first
                   token of its mention (ERNIE's K-Encoder on top of the T-Encoder; residual, zero-initialised
                   outputs: the untrained layer is the identity).  No dEA: ERNIE fine-tunes on the task alone.
  + KnowBERT       a KAR between MiniLM's layers 5 and 6 (after_layer=4; KnowBERT puts it after layer 10
                   of BERT-base's 12), frozen layer 6 above, mentions = the prefix name (one candidate, the
                   previous speaker) and every ``link_mentions`` span, candidates from the play's alias table
                   (the persons sharing the mention's alias key, at most 4, the linker's choice first), prior
                   p ∝ 1/(1 + alias priority); W₂ = 0 at start (w2_init="zero": the identity); plus KnowBERT's
                   entity-linking loss with the linker's choice as the gold entity.
  text + graph     late fusion: the probe's scores plus a learned weighting of the graph-only row's features

The readout and the scorer, identical in every neural row: h = [mean of the real tokens ; the state at
position 1] (768), MiniLM's own mean pooling and the first token of the previous speaker's name, where ERNIE
puts that entity's vector (mean pooling alone would spread ERNIE's one or two fused tokens over ~66); and
for candidate k with c_k = [n_k ; t_k] (n_k: the MiniLM sentence embedding of the candidate's name,
"Horatio", "First Clown"; t_k: its TransE vector, 50, trained on the graph's triples),

    s_k = (h W_q + b_q) · (c_k W_c) / √r + u · c_k            (r = 128),   softmax over the candidates

so every neural row, the text rows included, sees the candidates' TransE vectors in the output layer (the
brief's "same scorer for every row"); what the knowledge rows add is the linked entities *in the passage*.
"text, names only" shows what the TransE half of the scorer is worth by itself.  TransE (L1, margin 1,
dim 50, renorm, Bernoulli corruption filtered against the graph, batches of 128, 2,000 steps of AdamW at
lr 0.01; not tuned here) is trained per seed.  Entities with no graph triple (a role heard only outside
the graph scenes) keep their random unit vectors.

**Training.**  The base is frozen, so its states are computed once and cached (DIR/states-<sha>.npz, float16:
the last layer's for the probe, top-layer and ERNIE rows, layer 5's for KnowBERT; the cached paths are
checked at every run against ``ErnieEncoder`` / ``KnowBertEncoder`` on the live model).  Every neural row:
the shared Trainer, 400 steps of 16 examples (1.6 epochs of 4,000), the same batches for every row of a seed,
AdamW without weight decay, 40 warm-up steps, cosine to 10%, clip 1.0, no dropout.  Learning rate per row
from a grid (probe-like rows {1e-3, 3e-3, 1e-2}, fusion rows {3e-4, 1e-3, 3e-3}) by validation accuracy
(ties: validation loss) at the first seed, and that choice reused for the other seeds (``--grid-every-seed``:
a grid at each); the test set decides nothing.  Seeds 0, 1, 2: initialisation, TransE, batch order.

**Report.**  Test accuracy mean ± s.d. over seeds; a 95% percentile bootstrap interval over test examples
(2,000 resamples; a neural row's per-example score is its mean over seeds); paired bootstrap intervals for
the differences fixed in advance (ERNIE − top layer, KnowBERT − probe, each knowledge row − graph only,
ERNIE / KnowBERT − late fusion); and accuracy on the test examples whose speaker is not linked anywhere in
the input (no "[Enter Horatio]", no "Horatio, ..."), where the text has no name to copy.
Files: DIR/baselines.json, DIR/run-<row>-<seed>.json (reused when there; an interrupted run resumes),
DIR/states-*.npz, DIR/transe-*.npy, DIR/knowledge_fusion.{md,json,png} (DIR = out/knowledge_fusion); the
full run's report also goes to experiments/results/knowledge_fusion.{md,json,png}; ``--quick`` writes only
to out/knowledge_fusion_quick.  One BLAS and one Numba thread.

**Time** (``--estimate``, measured on the project's 2-core machine while two other jobs kept both cores busy,
this process getting about two thirds of one; an idle core should be faster).  Data (parse, split, graph,
link, tokenise): ~1 min.  MiniLM states of the 6,600 examples: ~90 ms an example, ~10 min.  TransE: ~5 ms a
step, 2,000 steps a seed.  Training steps of 16: probe, names, late fusion ~0.01 s; top layer and ERNIE
0.26-0.40 s; KnowBERT 0.56-0.69 s (its frozen layer 6 runs forward and backward); evaluation 9 ms (top,
ERNIE) and 22 ms (KnowBERT) an example.  The default plan (grid of 3 lrs on seed 0, its choice reused for
seeds 1 and 2: 5 runs of 400 steps per row) ~60 min; ``--grid-every-seed`` (9 runs per row) ~100 min; the
KnowBERT row is ~40% of either.
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first: limits threads before NumPy is imported

_common.limit_numba_threads()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from minilm import backend  # noqa: E402
from minilm import functional as F  # noqa: E402
from minilm.data import load_shakespeare  # noqa: E402
from minilm.data.knowledge import HONORIFICS, build_knowledge_graph, link_mentions, parse_plays  # noqa: E402
from minilm.data.pairs import is_scene_heading  # noqa: E402
from minilm.models.base import Model, ModelOutput, pool  # noqa: E402
from minilm.models.bert import Bert, find_minilm_l6_v2  # noqa: E402
from minilm.models.knowledge import (EntityTable, ErnieEncoder, ErnieFusionLayer, KnowBertEncoder,  # noqa: E402
                                     KnowledgeAttentionRecontextualization, align_to_first_token, entity_slots)
from minilm.models.transe import CorruptedTripleBatches, TransE, TransEConfig, transe_loss  # noqa: E402
from minilm.nn import Linear, init  # noqa: E402
from minilm.tensor import Generator, Tensor, manual_seed, no_grad  # noqa: E402
from minilm.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402
from minilm.train import TrainConfig, Trainer  # noqa: E402

_common.limit_loaded_threads(numba=True)

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(fractions=(("test", 0.15), ("val", 0.07), ("train", 0.25)), split_seed=0, n_train=4000, n_val=600,
            n_test=2000, max_len=128, speech_chars=1500, batch=16, steps=400, warmup=40, eval_batch=64,
            lrs={"probe": (1e-3, 3e-3, 1e-2), "fusion": (3e-4, 1e-3, 3e-3)}, seeds=(0, 1, 2),
            transe=dict(dim=50, p_norm=1, margin=1.0, lr=0.01, batch=128, steps=2000, warmup=100),
            rank=128, kar_after=4, mention_candidates=4, bootstrap=2000,
            lambdas=(1e-4, 1e-3, 1e-2, 1e-1, 1.0))
QUICK = {**FULL, "n_train": 96, "n_val": 32, "n_test": 64, "max_len": 64, "batch": 8, "steps": 12, "warmup": 2,
         "eval_batch": 32, "lrs": {"probe": (3e-3,), "fusion": (1e-3,)}, "seeds": (0, 1),
         "transe": {**FULL["transe"], "steps": 60, "warmup": 5}, "bootstrap": 200}

# row -> (label, kind, lr grid); the order of the table.  kind decides the encoder between base and scorer.
ROWS = {"names": ("text, names only (no graph anywhere)", "probe", "probe"),
        "probe": ("text: frozen MiniLM probe", "probe", "probe"),
        "top": ("text + top layer, no entities (capacity control)", "top", "fusion"),
        "ernie": ("+ ERNIE fusion (TransE of linked entities)", "ernie", "fusion"),
        "knowbert": ("+ KnowBERT KAR after layer 5 of 6", "knowbert", "fusion"),
        "late": ("text probe + graph features (late fusion)", "late", "probe")}
BASELINES = {"prior": "prior: most speeches in graph scenes",
             "rule": "graph rule: most speaks_to with the previous speaker",
             "graph": "graph only: conditional logit on graph look-ups"}
# the differences the report bootstraps, fixed before any result
COMPARISONS = (("ernie", "top"), ("knowbert", "probe"), ("ernie", "graph"), ("knowbert", "graph"),
               ("late", "graph"), ("probe", "graph"), ("ernie", "late"), ("knowbert", "late"), ("probe", "names"))
FEATURES = ("log1p speaks_to(prev, k)", "log1p appears_in(k)", "k linked in prev speech", "k linked in current speech",
            "log1p speaks_to(linked in prev, k)", "log1p speaks_to(linked in current, k)",
            "persons-list relation prev~k", "k is a role")
D_BASE = 384


# ---- the plays, split by scene ----------------------------------------------------------------------------
def scene_split(plays, fractions, seed: int) -> dict:
    """(title, scene) -> "test" / "val" / "train" / "graph": each play's scenes permuted by one seeded
    generator (plays in corpus order) and dealt out, each named split getting max(1, round(f · n))."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in plays:
        scenes = sorted({s.scene for s in p.speeches})
        perm = [int(s) for s in rng.permutation(scenes)]
        k = 0
        for name, f in fractions:
            n = max(1, round(f * len(scenes)))
            for s in perm[k:k + n]:
                out[(p.title, s)] = name
            k += n
        for s in perm[k:]:
            out[(p.title, s)] = "graph"
    return out


def speech_bodies(play) -> list[str]:
    """The text under each speech heading: the lines after it up to the next heading or scene heading
    (stage directions kept); ``head_chars`` / ``tail_chars`` cut it to length."""
    lines = play.text.split("\n")
    sp = play.speeches
    out = []
    for i, s in enumerate(sp):
        end = sp[i + 1].line_no if i + 1 < len(sp) else len(lines)
        body = []
        for ln in lines[s.line_no + 1:end]:
            if is_scene_heading(ln):
                break
            body.append(ln.rstrip())
        while body and not body[-1].strip():
            body.pop()
        out.append("\n".join(body))
    return out


def head_chars(text: str, n: int) -> str:
    """The first lines of ``text`` up to ``n`` characters (at least one line)."""
    if len(text) <= n:
        return text
    cut = text.rfind("\n", 0, n)
    return text[:cut if cut > 0 else n]


def tail_chars(text: str, n: int) -> str:
    """The last lines of ``text`` up to ``n`` characters."""
    if len(text) <= n:
        return text
    cut = text.find("\n", len(text) - n)
    return text[cut + 1 if cut >= 0 else len(text) - n:]


def display_name(entity: str) -> str:
    """"Hamlet::Horatio" -> "Horatio"; "As You Like It::Jaques (Son of Sir Rowland de Bois)" -> "Jaques"."""
    return re.sub(r"\s*\(.*\)$", "", entity.split("::", 1)[1])


def alias_key(s: str) -> str:
    """The alias-table key of a mention's surface form (the rule of knowledge._norm)."""
    s = s.lower().replace("mrs.", "mistress ").replace("mrs ", "mistress ")
    s = re.sub(r"[.\[\]{}()!?;:\"]", " ", s)
    return " ".join(s.replace(",", " ").replace("-", " ").split())


class GraphStats:
    """The look-ups the graph-only row and the features need, from the graph's triples."""

    def __init__(self, kg):
        n = len(kg.entities)
        self.speaks = defaultdict(int)                     # (a, b) -> adjacencies, both orders
        self.appears = np.zeros(n, dtype=np.int64)
        self.related = set()                                # frozenset{a, b}: a persons-list relation
        rel = kg.relations
        for (h, r, t), c in zip(kg.triples.tolist(), kg.counts.tolist()):
            name = rel[r]
            if name == "speaks_to":
                self.speaks[(h, t)] += c
                self.speaks[(t, h)] += c
            elif name == "appears_in":
                self.appears[h] += c
            elif name != "genre_of" and kg.entity_types[t] in ("character", "role"):
                self.related.add(frozenset((h, t)))


# ---- examples ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Example:
    play: str
    scene: int
    split: str
    prev: int                       # entity index of the previous speaker
    gold: int                       # entity index of the current speaker
    ids: np.ndarray                 # (T,) WordPiece ids
    types: np.ndarray               # (T,) segment ids
    mentions: list                  # [(start, end incl., entity, [candidates], [priors], where)]
    candidates: np.ndarray          # (K,) entity indices
    label: int                      # gold's position in candidates
    features: np.ndarray            # (K, len(FEATURES))
    gold_named: bool                # the gold speaker is linked somewhere in the two speeches
    truncated: bool


class Data:
    """Plays, split, graph, linked and tokenised examples (the module docstring's task)."""

    def __init__(self, cfg: dict, tok, stream=sys.stdout):
        t0 = time.perf_counter()
        corpus = load_shakespeare()
        plays = parse_plays(corpus.works)
        self.split = scene_split(plays, cfg["fractions"], cfg["split_seed"])
        graph_plays = [dataclasses.replace(p, speeches=[s for s in p.speeches
                                                        if self.split[(p.title, s.scene)] == "graph"])
                       for p in plays]
        self.kg, _ = build_knowledge_graph(plays=graph_plays)
        self.stats = GraphStats(self.kg)
        self.checks = self._check_graph(graph_plays)
        eidx = self.kg.entity_index
        self.tok, self.cfg = tok, cfg
        self._linked = {}                                # (play, text) -> link_mentions(text): speeches recur
        # candidates: the persons list + roles that speak in a graph or train scene
        heard = defaultdict(set)
        for p in plays:
            for s in p.speeches:
                if self.split[(p.title, s.scene)] in ("graph", "train") and s.kind == "role":
                    heard[p.title].add(s.ids[0])
        self.play_candidates = {p.title: sorted(eidx[e] for e in set(p.character_ids) | heard[p.title])
                                for p in plays}
        # the pairs, per split, in play order
        pairs = defaultdict(list)
        for p in plays:
            prev = None
            for i, s in enumerate(p.speeches):
                single = s.ids[0] if s.kind in ("character", "role") else None
                if prev is not None and single is not None and prev[0] == s.scene:
                    pairs[self.split[(p.title, s.scene)]].append((p.title, i - 1, i))
                prev = (s.scene, single) if single is not None else None
        self.pool_sizes = {k: len(v) for k, v in pairs.items()}
        rng = np.random.default_rng(cfg["split_seed"])
        by_title = {p.title: p for p in plays}
        link_play = {p.title: p for p in graph_plays}
        bodies = {}
        self.dropped = Counter()
        self.examples = {}
        for name in ("train", "val", "test"):
            want = cfg[f"n_{name}"]
            order = rng.permutation(len(pairs[name]))
            got = []
            for j in order:                              # a random draw, in a fixed order, skipping dropped pairs
                if len(got) >= want:
                    break
                title, a, b = pairs[name][int(j)]
                play = by_title[title]
                if title not in bodies:
                    bodies[title] = speech_bodies(play)
                ex = self._example(play, link_play[title], bodies[title], a, b, name)
                if isinstance(ex, str):
                    self.dropped[(name, ex)] += 1
                    continue
                got.append(ex)
            self.examples[name] = got
        for name, got in self.examples.items():          # every example's scene is of its own split, none a graph scene
            bad = [e for e in got if self.split[(e.play, e.scene)] != name]
            if bad:
                raise AssertionError(f"{len(bad)} {name} examples come from scenes of another split")
        self.checks["examples_in_their_own_split"] = True
        self.seconds = time.perf_counter() - t0
        print(self.summary(), file=stream, flush=True)

    def _check_graph(self, graph_plays) -> dict:
        """The graph's appears_in and speaks_to totals against a recount over the graph scenes alone."""
        appears = speaks = 0
        for p in graph_plays:
            prev = None
            for s in p.speeches:
                appears += len(s.ids)
                single = s.ids[0] if s.kind in ("character", "role") else None
                if prev is not None and single is not None and prev[0] == s.scene and prev[1] != single:
                    speaks += 1
                prev = (s.scene, single) if single is not None else None
        rep = self.kg.report()["relations"]
        got = {"appears_in": rep["appears_in"][1], "speaks_to": rep["speaks_to"][1]}
        want = {"appears_in": appears, "speaks_to": speaks}
        if got != want:
            raise AssertionError(f"graph counts {got} differ from the graph scenes' recount {want}")
        per_scene = Counter(self.split.values())
        return {"graph_counts_match_graph_scenes": True, "counts": want, "scenes": dict(per_scene)}

    def _mentions(self, link_play, text: str, where: str) -> list:
        """(start, end, entity, candidates, priors, where) of the persons linked in ``text``; the candidates
        are the play's persons sharing the mention's alias key (the linker's choice first, at most
        ``mention_candidates``), the prior ∝ 1/(1 + alias priority), the linker's choice at priority 0."""
        eidx = self.kg.entity_index
        memo = (link_play.title, text)
        if memo not in self._linked:
            self._linked[memo] = link_mentions(text, link_play)
        out = []
        for s, e, ent in self._linked[memo]:
            key = alias_key(text[s:e])
            if ent not in eidx or not key:          # a role the linker made up from a heading-like line
                continue
            hits = link_play.alias_index.get(key)
            if not hits and key.split()[0] in HONORIFICS:
                hits = link_play.alias_index.get(" ".join(key.split()[1:]))
            best = {eidx[ent]: 0}
            for i, pr in sorted(hits or [], key=lambda x: x[1]):
                c = eidx[link_play.person_id(i)]
                best.setdefault(c, pr)
            cands = list(best)[:self.cfg["mention_candidates"]]
            pri = np.array([1.0 / (1.0 + best[c]) for c in cands])
            out.append((s, e, eidx[ent], cands, (pri / pri.sum()).tolist(), where))
        return out

    def _pieces(self, text: str, mentions: list) -> tuple[list[int], list]:
        """Token ids of ``text`` and each mention's (start, end incl.) token span, tokenising the text in
        pieces cut at the mention boundaries (which are word boundaries, so the pieces give the same tokens)."""
        ids, spans, pos = [], [], 0
        enc = self.tok.encode
        for m in mentions:
            s, e = m[0], m[1]
            ids += enc(text[pos:s], add_special_tokens=False).input_ids
            start = len(ids)
            ids += enc(text[s:e], add_special_tokens=False).input_ids
            if len(ids) > start:
                spans.append((start, len(ids) - 1, m))
            pos = e
        ids += enc(text[pos:], add_special_tokens=False).input_ids
        return ids, spans

    def _example(self, play, link_play, bodies, a: int, b: int, split: str):
        eidx = self.kg.entity_index
        sa, sb = play.speeches[a], play.speeches[b]
        prev, gold = eidx[sa.ids[0]], eidx[sb.ids[0]]
        if prev == gold:
            return "speaker follows himself"
        cands = [c for c in self.play_candidates[play.title] if c != prev]
        if gold not in cands:
            return "speaker not a candidate"
        n = self.cfg["speech_chars"]
        prev_text, cur_text = tail_chars(bodies[a], n), head_chars(bodies[b], n)
        heading = sb.heading.strip()
        if cur_text.split("\n", 1)[0].strip() == heading:
            raise AssertionError(f"{play.title}: the current speech starts with its own heading {heading!r}")
        # tokens: [CLS] name : prev [SEP] cur [SEP]
        tok, L = self.tok, self.cfg["max_len"]
        name_ids = tok.encode(display_name(sa.ids[0]), add_special_tokens=False).input_ids
        colon = tok.encode(":", add_special_tokens=False).input_ids
        p_ids, p_spans = self._pieces(prev_text, self._mentions(link_play, prev_text, "prev"))
        c_ids, c_spans = self._pieces(cur_text, self._mentions(link_play, cur_text, "cur"))
        room = L - 3 - len(name_ids) - len(colon)
        na, nb = len(p_ids), len(c_ids)
        truncated = na + nb > room
        if truncated:                                   # the current speech keeps its start, the previous its end
            keep_b = min(nb, max(room // 2, room - na))
            keep_a = min(na, room - keep_b)
        else:
            keep_a, keep_b = na, nb
        cut = na - keep_a
        off_p = 1 + len(name_ids) + len(colon)
        off_c = off_p + keep_a + 1
        ids = [tok.cls_id, *name_ids, *colon, *p_ids[cut:], tok.sep_id, *c_ids[:keep_b], tok.sep_id]
        types = [0] * (off_c) + [1] * (keep_b + 1)
        mentions = [(1, len(name_ids), prev, [prev], [1.0], "name")]
        mentions += [(s - cut + off_p, e - cut + off_p, *m[2:]) for s, e, m in p_spans if s >= cut]
        mentions += [(s + off_c, e + off_c, *m[2:]) for s, e, m in c_spans if e < keep_b]
        linked = {m[2] for m in mentions if m[5] != "name"}
        cands = np.array(cands, dtype=np.int64)
        return Example(play.title, sb.scene, split, prev, gold, np.array(ids, dtype=np.int64),
                       np.array(types, dtype=np.int64), mentions, cands, int(np.flatnonzero(cands == gold)[0]),
                       self._features(prev, cands, mentions), gold in linked, truncated)

    def _features(self, prev: int, cands: np.ndarray, mentions: list) -> np.ndarray:
        st, kg = self.stats, self.kg
        in_prev = {m[2] for m in mentions if m[5] == "prev"}
        in_cur = {m[2] for m in mentions if m[5] == "cur"}
        f = np.zeros((len(cands), len(FEATURES)))
        for j, k in enumerate(cands.tolist()):
            f[j] = (math.log1p(st.speaks.get((prev, k), 0)), math.log1p(st.appears[k]), k in in_prev, k in in_cur,
                    math.log1p(sum(st.speaks.get((m, k), 0) for m in in_prev if m != k)),
                    math.log1p(sum(st.speaks.get((m, k), 0) for m in in_cur if m != k)),
                    frozenset((prev, k)) in st.related, kg.entity_types[k] == "role")
        return f

    def summary(self) -> str:
        ex = self.examples
        lines = [f"graph (graph scenes only): {self.kg}; scenes per split {self.checks['scenes']}; "
                 f"pairs available {self.pool_sizes}"]
        for name in ("train", "val", "test"):
            e = ex[name]
            if not e:
                continue
            lines.append(f"  {name}: {len(e)} examples, {np.mean([len(x.candidates) for x in e]):.1f} candidates "
                         f"on average, {np.mean([len(x.ids) for x in e]):.0f} tokens, "
                         f"{np.mean([x.truncated for x in e]):.0%} truncated, "
                         f"{np.mean([len(x.mentions) - 1 for x in e]):.1f} linked mentions besides the name, "
                         f"speaker named in the input {np.mean([x.gold_named for x in e]):.0%}")
        if self.dropped:
            lines.append("  dropped while drawing: " + ", ".join(f"{k[0]} {k[1]}: {v}"
                                                                 for k, v in sorted(self.dropped.items())))
        lines.append(f"  (data ready in {self.seconds:.0f} s)")
        return "\n".join(lines)

    def meta(self) -> dict:
        ex = self.examples
        return {"sizes": {k: len(v) for k, v in ex.items()}, "pairs_available": self.pool_sizes,
                "scenes": self.checks["scenes"], "graph": repr(self.kg), "checks": self.checks,
                "mean_candidates": {k: float(np.mean([len(x.candidates) for x in v])) for k, v in ex.items() if v},
                "mean_tokens": {k: float(np.mean([len(x.ids) for x in v])) for k, v in ex.items() if v},
                "truncated": {k: float(np.mean([x.truncated for x in v])) for k, v in ex.items() if v},
                "gold_named": {k: float(np.mean([x.gold_named for x in v])) for k, v in ex.items() if v},
                "dropped": {f"{a}: {b}": c for (a, b), c in self.dropped.items()}}

    def all_examples(self) -> list[Example]:
        return self.examples["train"] + self.examples["val"] + self.examples["test"]

    def key(self) -> str:
        h = hashlib.sha256()
        for e in self.all_examples():
            h.update(e.ids.tobytes())
            h.update(e.types.tobytes())
        return h.hexdigest()[:16]


# ---- the frozen base's states, cached ---------------------------------------------------------------------
class States:
    """float16 states of every example (concatenated, ``offsets``), layer kar_after + 1's and the last's,
    the last layer's ``readout`` (float32), and the name embeddings of the candidate entities."""

    def __init__(self, h_mid, h_last, offsets, pooled, names):
        self.h_mid, self.h_last, self.offsets, self.pooled, self.names = h_mid, h_last, offsets, pooled, names

    def rows(self, which: str, i: int) -> np.ndarray:
        a = self.h_mid if which == "mid" else self.h_last
        return a[self.offsets[i]:self.offsets[i + 1]]


def name_table(bert, tok, kg) -> np.ndarray:
    """(n_entities, 384) MiniLM sentence embeddings of the characters' and roles' names; 0 for the rest."""
    who = [i for i, t in enumerate(kg.entity_types) if t in ("character", "role")]
    names = [display_name(kg.entities[i]) for i in who]
    out = np.zeros((len(kg.entities), D_BASE), dtype=np.float32)
    with no_grad():
        bert.eval()
        for s in range(0, len(names), 128):
            e = tok.encode_batch(names[s:s + 128], padding=True, max_length=32)
            out[who[s:s + 128]] = bert.sentence_embedding(Tensor(e["input_ids"]),
                                                          attention_mask=Tensor(e["attention_mask"])).numpy()
    return out


def batch_arrays(examples, idx) -> dict:
    """input_ids, token_type_ids, attention_mask (B, T) of examples ``idx``, padded to the longest."""
    T = max(len(examples[i].ids) for i in idx)
    out = {k: np.zeros((len(idx), T), dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
    for r, i in enumerate(idx):
        n = len(examples[i].ids)
        out["input_ids"][r, :n] = examples[i].ids
        out["token_type_ids"][r, :n] = examples[i].types
        out["attention_mask"][r, :n] = 1
    return out


@no_grad()
def compute_states(bert, tok, data: Data, cfg: dict, examples=None, stream=sys.stdout, names=None) -> States:
    """The states of ``examples`` (default: every example, train, val, test in order); ``names``: the name
    table if already computed."""
    examples = data.all_examples() if examples is None else examples
    bert.eval()
    lengths = np.array([len(e.ids) for e in examples])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    h_mid = np.zeros((offsets[-1], D_BASE), dtype=np.float16)
    h_last = np.zeros((offsets[-1], D_BASE), dtype=np.float16)
    pooled = np.zeros((len(examples), 2 * D_BASE), dtype=np.float32)
    order = np.argsort(lengths, kind="stable")              # similar lengths together: little padding
    t0 = time.perf_counter()
    for s in range(0, len(order), 32):
        idx = order[s:s + 32].tolist()
        b = batch_arrays(examples, idx)
        layers, last = bert.hidden_states(Tensor(b["input_ids"]), Tensor(b["attention_mask"]),
                                          Tensor(b["token_type_ids"]), all_layers=True)   # [H⁰ … H⁶], H⁶
        mid = layers[cfg["kar_after"] + 1].numpy()          # the output of layer kar_after (0-based)
        top = last.numpy()
        pooled[idx] = readout(last, b["attention_mask"]).numpy()
        for r, i in enumerate(idx):
            h_mid[offsets[i]:offsets[i + 1]] = mid[r, :lengths[i]]
            h_last[offsets[i]:offsets[i + 1]] = top[r, :lengths[i]]
        if (s // 32) % 40 == 0:
            done = time.perf_counter() - t0
            print(f"  states: {s + len(idx)}/{len(order)} examples, {done:.0f} s", file=stream, flush=True)
    return States(h_mid, h_last, offsets, pooled, name_table(bert, tok, data.kg) if names is None else names)


def cached_states(out: Path, bert, tok, data: Data, cfg: dict) -> States:
    path = out / f"states-{data.key()}-{cfg['kar_after']}-readout2.npz"
    if path.exists():
        z = np.load(path)
        return States(z["h_mid"], z["h_last"], z["offsets"], z["pooled"], z["names"])
    t0 = time.perf_counter()
    st = compute_states(bert, tok, data, cfg)
    np.savez(path, h_mid=st.h_mid, h_last=st.h_last, offsets=st.offsets, pooled=st.pooled, names=st.names)
    print(f"  states of {len(st.pooled)} examples cached in {time.perf_counter() - t0:.0f} s: {path}", flush=True)
    return st


# ---- TransE on the graph --------------------------------------------------------------------------------------
def train_transe(kg, cfg: dict, seed: int) -> np.ndarray:
    c = cfg["transe"]
    n, R = len(kg.entities), len(kg.relations)
    model = TransE(TransEConfig(n, R, dim=c["dim"], p_norm=c["p_norm"], margin=c["margin"], entity_norm="renorm"),
                   generator=Generator(seed))
    batches = CorruptedTripleBatches(kg.triples, n, c["batch"], seed=seed, known=kg.triples, bernoulli=True,
                                     n_relations=R)
    config = TrainConfig(max_steps=c["steps"], batch_size=c["batch"], learning_rate=c["lr"], weight_decay=0.0,
                         grad_clip=0.0, warmup_steps=min(c["warmup"], c["steps"]), min_lr_ratio=0.1, eval_interval=0,
                         log_interval=max(1, c["steps"] // 4), seed=seed)
    res = Trainer(model, config, batches, loss_fn=transe_loss, quiet=True).fit()
    return model.entity_table().astype(np.float32), res


def cached_transe(out: Path, kg, cfg: dict, seed: int) -> np.ndarray:
    c = cfg["transe"]
    h = hashlib.sha256(repr(sorted(c.items())).encode())
    h.update(kg.triples.tobytes())
    h.update(kg.counts.tobytes())
    tag = h.hexdigest()[:8]
    path = out / f"transe-{seed}-{tag}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    table, res = train_transe(kg, cfg, seed)
    np.save(path, table)
    print(f"  TransE seed {seed}: {c['steps']} steps, final loss {np.mean(res['loss'][-50:]):.3f}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return table


# ---- the model: an encoder between the frozen base and the shared scorer ---------------------------------------
def _host(x) -> np.ndarray:
    a = x.data if isinstance(x, Tensor) else x
    return backend.to_numpy(a) if backend.is_array(a) else np.asarray(a)


def readout(x: Tensor, attention_mask) -> Tensor:
    """h = [mean of the real tokens ; the state at position 1] (B, 768): MiniLM's own pooling, and the first
    token of the previous speaker's name (every input starts "[CLS] <name> :"), where ERNIE puts that
    entity's knowledge; the same readout for every neural row."""
    return F.concat([pool(x, attention_mask, "mean"), x[:, 1]], axis=-1)              # (B, 2d)


class SpeakerScorer(Model):
    """Scores a passage's candidates (module docstring):

        h = readout(encoder(states))            kind "probe"/"late": the cached readout of the frozen last states
        s_k = (h W_q + b_q) · (c_k W_c) / √r + u · c_k  [+ v · f_k for "late"]        (B, K)
        loss = −log softmax_K(s)_gold  [+ KnowBERT's L_EL]

    ``candidate_table`` (n_entities, 384 + d_e): c_k = [name embedding ; TransE] (frozen, an EntityTable);
    ``entity_table`` (n_entities, d_e): what ERNIE and the KAR read; ``top_layer``: the frozen Bert layer above
    the KAR (kept out of the module tree: not trained, always in eval mode).  Every step is an op of
    minilm.functional or a checked module of minilm.models.knowledge."""

    def __init__(self, kind: str, candidate_table, entity_table, rank: int, n_features: int,
                 top_layer=None, generator=None):
        super().__init__()
        self.kind = kind
        d_e = entity_table.shape[1]
        self.candidates = EntityTable(candidate_table)
        if kind in ("top", "ernie"):
            self.entities = EntityTable(entity_table)
            self.fusion = ErnieFusionLayer(D_BASE, d_e, heads_w=12, heads_e=2, residual=True, generator=generator)
        if kind == "knowbert":
            self.kar = KnowledgeAttentionRecontextualization(D_BASE, entity_table, heads=2, span_heads=2,
                                                             span_ffn=4 * d_e, w2_init="zero", generator=generator)
            if top_layer is None:
                raise ValueError("SpeakerScorer: kind 'knowbert' needs the frozen layer above the KAR")
            top_layer.eval()
            top_layer.freeze()
        self._top = [top_layer]                       # a list: outside the module tree
        self.rank = rank
        self.query = Linear(2 * D_BASE, rank, generator=generator)                       # W_q, b_q
        self.key = Linear(candidate_table.shape[1], rank, bias=False, generator=generator)   # W_c
        self.prior = Linear(candidate_table.shape[1], 1, bias=False, generator=generator)    # u
        for m in (self.query, self.key, self.prior):
            init.normal_(m.weight, 0.0, 0.02, generator)
        init.zeros_(self.query.bias)
        if kind == "late":
            self.graph = Linear(n_features, 1, bias=False, generator=generator)              # v
            init.zeros_(self.graph.weight)

    def encode(self, pooled=None, states=None, attention_mask=None, entity_ids=None, mention_spans=None,
               mention_candidates=None, priors=None):
        """h (B, 768) (``readout``), and the KAR's parts (or None)."""
        if self.kind in ("probe", "late"):
            return pooled, None
        mask = _host(attention_mask)
        kpm = backend.to_device(mask == 0, states.device)                               # (B, T), True = padding
        if self.kind in ("top", "ernie"):
            ents = _host(entity_ids) if self.kind == "ernie" else np.full(mask.shape, -1, dtype=np.int64)
            slots, slot_entities = entity_slots(ents)
            e = self.entities.lookup(slot_entities)                                      # (B, M, d_e)
            x, _ = self.fusion(states, e, slots, kpm)                                    # ERNIE eqs. (3)-(5)
            return readout(x, mask), None
        x, parts = self.kar(states, _host(mention_spans), _host(mention_candidates), _host(priors),
                            attention_mask=mask, return_parts=True)                      # KnowBERT (1)-(6)
        x = self._top[0](x, kpm)                                                         # the frozen layer above
        return readout(x, mask), parts

    def forward(self, candidates, labels=None, features=None, gold_entities=None, **inputs) -> ModelOutput:
        h, parts = self.encode(**inputs)                                                 # (B, 768)
        cand = _host(candidates)                                                         # (B, K), −1 = padding
        B, K = cand.shape
        c = self.candidates.lookup(cand)                                                 # (B, K, D)
        q = self.query(h).reshape(B, 1, self.rank)                                       # (B, r) -> (B, 1, r)
        k = self.key(c)                                                                  # (B, K, r)
        s = (q * k).sum(axis=-1) / math.sqrt(self.rank) + self.prior(c).reshape(B, K)    # (B, K)
        if self.kind == "late":
            s = s + self.graph(features).reshape(B, K)                                   # (B, K, 1) -> (B, K)
        s = F.masked_fill(s, backend.to_device(cand < 0, h.device), float(np.finfo(np.float32).min) / 4)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(s, labels)
            if self.kind == "knowbert":
                loss = loss + self.kar.entity_linking_loss(parts["psi"], parts["candidates"], _host(gold_entities))
        return ModelOutput(logits=s, loss=loss)


# ---- batches ------------------------------------------------------------------------------------------------------
NEEDS = {"probe": ("pooled",), "late": ("pooled", "features"), "top": ("last",), "ernie": ("last", "entities"),
         "knowbert": ("mid", "mentions")}


def make_batch(examples, states: States, index: np.ndarray, idx, kind: str, feat_norm=None) -> dict:
    """The model's inputs for examples ``idx`` (positions into ``examples``, whose states are at ``index``)."""
    ex = [examples[i] for i in idx]
    B = len(ex)
    K = max(len(e.candidates) for e in ex)
    out = {"candidates": np.full((B, K), -1, dtype=np.int64), "labels": np.array([e.label for e in ex])}
    for r, e in enumerate(ex):
        out["candidates"][r, :len(e.candidates)] = e.candidates
    needs = NEEDS[kind]
    if "pooled" in needs:
        out["pooled"] = states.pooled[index[idx]]
    if "features" in needs:
        mu, sd = feat_norm
        f = np.zeros((B, K, len(FEATURES)), dtype=np.float32)
        for r, e in enumerate(ex):
            f[r, :len(e.candidates)] = (e.features - mu) / sd
        out["features"] = f
    if "last" in needs or "mid" in needs:
        which = "mid" if "mid" in needs else "last"
        T = max(len(e.ids) for e in ex)
        x = np.zeros((B, T, D_BASE), dtype=np.float32)
        mask = np.zeros((B, T), dtype=np.int64)
        for r, (e, i) in enumerate(zip(ex, idx)):
            x[r, :len(e.ids)] = states.rows(which, index[i])
            mask[r, :len(e.ids)] = 1
        out["states"], out["attention_mask"] = x, mask
    if "entities" in needs:
        T = out["states"].shape[1]
        M = max(len(e.mentions) for e in ex)
        spans = np.full((B, M, 2), -1, dtype=np.int64)
        ents = np.full((B, M), -1, dtype=np.int64)
        for r, e in enumerate(ex):
            for m, men in enumerate(e.mentions):
                spans[r, m] = men[:2]
                ents[r, m] = men[2]
        out["entity_ids"] = align_to_first_token(spans, ents, T)                      # ERNIE: first token
    if "mentions" in needs:
        M = max(len(e.mentions) for e in ex)
        C = max(len(men[3]) for e in ex for men in e.mentions)
        spans = np.full((B, M, 2), -1, dtype=np.int64)
        cands = np.full((B, M, C), -1, dtype=np.int64)
        pri = np.zeros((B, M, C), dtype=np.float32)
        gold = np.full((B, M), -1, dtype=np.int64)
        for r, e in enumerate(ex):
            for m, men in enumerate(e.mentions):
                spans[r, m] = men[:2]
                cands[r, m, :len(men[3])] = men[3]
                pri[r, m, :len(men[4])] = men[4]
                gold[r, m] = men[2]
        out.update(mention_spans=spans, mention_candidates=cands, priors=pri, gold_entities=gold)
    return out


class Batches:
    """Random minibatches (with replacement, a seeded generator: the same draws for every row of a seed)."""

    def __init__(self, examples, states, index, kind, batch_size, seed, feat_norm=None):
        self.examples, self.states, self.index, self.kind = examples, states, index, kind
        self.batch_size, self.feat_norm = batch_size, feat_norm
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> dict:
        idx = self.rng.integers(0, len(self.examples), size=self.batch_size).tolist()
        return make_batch(self.examples, self.states, self.index, idx, self.kind, self.feat_norm)


@no_grad()
def evaluate(model, examples, states, index, kind, batch_size, feat_norm=None) -> dict:
    model.eval()
    preds, losses = [], []
    for s in range(0, len(examples), batch_size):
        idx = list(range(s, min(s + batch_size, len(examples))))
        b = make_batch(examples, states, index, idx, kind, feat_norm)
        labels = b.pop("labels")
        b.pop("gold_entities", None)
        logits = model(**{k: Tensor(v) for k, v in b.items()}).logits.numpy().astype(np.float64)
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        losses.append(-logp[np.arange(len(idx)), labels])
        preds.append(logits.argmax(1))
    pred = np.concatenate(preds)
    gold = np.array([e.label for e in examples])
    return {"accuracy": float((pred == gold).mean()), "loss": float(np.concatenate(losses).mean()),
            "correct": (pred == gold).astype(int).tolist()}


# ---- the knowledge-only baselines --------------------------------------------------------------------------------
def padded_features(examples):
    K = max(len(e.candidates) for e in examples)
    X = np.zeros((len(examples), K, len(FEATURES)))
    valid = np.zeros((len(examples), K), dtype=bool)
    for i, e in enumerate(examples):
        X[i, :len(e.candidates)] = e.features
        valid[i, :len(e.candidates)] = True
    return X, valid, np.array([e.label for e in examples])


def feature_norm(examples) -> tuple[np.ndarray, np.ndarray]:
    """Mean and s.d. of every feature over the train examples' candidates (s.d. 1 where constant)."""
    f = np.concatenate([e.features for e in examples])
    sd = f.std(0)
    return f.mean(0).astype(np.float32), np.where(sd > 0, sd, 1.0).astype(np.float32)


def fit_conditional_logit(X, valid, y, lam: float) -> np.ndarray:
    """w (F,) minimising mean_i −log softmax_{k valid}(X_i w)_{y_i} + lam/2 ‖w‖² (L-BFGS);
    the gradient is mean_i (E_p[x_ik] − x_{i y_i}) + lam w."""
    N = len(y)

    def f(w):
        s = np.where(valid, X @ w, -np.inf)                                           # (N, K)
        s = s - s.max(1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(1, keepdims=True)
        loss = -np.mean(np.log(p[np.arange(N), y] + 1e-300)) + lam / 2 * w @ w
        grad = np.einsum("nk,nkf->f", p, X) / N - X[np.arange(N), y].mean(0) + lam * w
        return loss, grad
    return minimize(f, np.zeros(X.shape[2]), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x


def logit_predict(X, valid, w):
    return np.where(valid, X @ w, -np.inf).argmax(1)


def baselines(data: Data, cfg: dict) -> dict:
    ex = data.examples
    out = {}
    for name in ("prior", "rule"):
        res = {}
        for split in ("val", "test"):
            right = []
            for e in ex[split]:
                key = e.features[:, 1] if name == "prior" else e.features[:, 0] * 1e6 + e.features[:, 1]
                right.append(int(np.argmax(key) == e.label))      # argmax: the first of ties, in entity order
            res[split] = right
        out[name] = {"val_accuracy": float(np.mean(res["val"])), "test_correct": res["test"]}
    mu, sd = feature_norm(ex["train"])
    sets = {s: padded_features(ex[s]) for s in ("train", "val", "test")}
    norm = {s: ((X - mu) / sd, v, y) for s, (X, v, y) in sets.items()}
    grid = []
    for lam in cfg["lambdas"]:
        w = fit_conditional_logit(*norm["train"], lam)
        Xv, vv, yv = norm["val"]
        grid.append((float((logit_predict(Xv, vv, w) == yv).mean()), lam, w))
    acc, lam, w = max(grid, key=lambda g: (g[0], g[1]))                 # ties: the stronger penalty
    Xt, vt, yt = norm["test"]
    out["graph"] = {"val_accuracy": acc, "lambda": lam, "weights": dict(zip(FEATURES, w.tolist())),
                    "grid": [(g[1], g[0]) for g in grid],
                    "test_correct": (logit_predict(Xt, vt, w) == yt).astype(int).tolist()}
    return out


# ---- one (row, seed) ----------------------------------------------------------------------------------------------
def candidate_table(states: States, transe: np.ndarray, names_only: bool) -> np.ndarray:
    t = np.zeros_like(transe) if names_only else transe
    return np.concatenate([states.names, t], axis=1).astype(np.float32)                 # (n_entities, 384 + d_e)


def build_model(row: str, states: States, transe: np.ndarray, cfg: dict, seed: int, bert) -> SpeakerScorer:
    kind = ROWS[row][1]
    manual_seed(seed)
    top = bert.encoder.layer[cfg["kar_after"] + 1] if kind == "knowbert" else None
    return SpeakerScorer(kind, candidate_table(states, transe, row == "names"), transe, cfg["rank"], len(FEATURES),
                         top_layer=top, generator=Generator(seed))


def train_config(cfg: dict, seed: int, lr: float, steps=None) -> TrainConfig:
    steps = steps or cfg["steps"]
    return TrainConfig(max_steps=steps, batch_size=cfg["batch"], learning_rate=lr, min_lr_ratio=0.1,
                       warmup_steps=min(cfg["warmup"], steps), weight_decay=0.0, beta2=0.999, grad_clip=1.0,
                       eval_interval=0, log_interval=max(1, steps // 4), seed=seed)


def run_row(row: str, seed: int, data: Data, states: States, index: dict, transe, cfg: dict, lrs, bert) -> dict:
    """Fine-tune the row at each lr of the grid, keep the best validation accuracy, test it once."""
    kind = ROWS[row][1]
    ex = data.examples
    fn = feature_norm(ex["train"]) if kind == "late" else None
    grid, best, t_start = [], None, time.perf_counter()
    for lr in lrs:
        model = build_model(row, states, transe, cfg, seed, bert)
        batches = Batches(ex["train"], states, index["train"], kind, cfg["batch"], seed, fn)
        t0 = time.perf_counter()
        try:
            res = Trainer(model, train_config(cfg, seed, lr), batches, quiet=True).fit()
            val = evaluate(model, ex["val"], states, index["val"], kind, cfg["eval_batch"], fn)
        except FloatingPointError as err:                 # diverged: the worst possible choice
            print(f"   lr {lr:g} diverged: {err}", flush=True)
            res, val = {"loss": [], "sec_per_step": float("nan")}, {"accuracy": -1.0, "loss": math.inf}
        losses = res["loss"]
        entry = {"lr": lr, "val_accuracy": val["accuracy"], "val_loss": val["loss"],
                 "seconds": time.perf_counter() - t0, "sec_per_step": res["sec_per_step"],
                 "first_loss": float(np.mean(losses[:10])) if losses else None,
                 "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None}
        grid.append(entry)
        print(f"   {row} seed {seed} lr {lr:g}: val accuracy {val['accuracy']:.3f}, loss {val['loss']:.3f}; "
              f"train loss {entry['first_loss'] or float('nan'):.3f} -> {entry['final_loss'] or float('nan'):.3f}; "
              f"{entry['sec_per_step']:.3f} s/step, {entry['seconds']:.0f} s", flush=True)
        score = (val["accuracy"], -val["loss"])
        if best is None or score > best[0]:
            best = (score, lr, {k: np.array(a, copy=True) for k, a in model.state_dict().items()}, model)
    _, lr, state, model = best
    model.load_state_dict(state)
    t0 = time.perf_counter()
    test = evaluate(model, ex["test"], states, index["test"], kind, cfg["eval_batch"], fn)
    return {"row": row, "label": ROWS[row][0], "seed": seed, "lr": lr, "grid": grid,
            "val_accuracy": max(g["val_accuracy"] for g in grid), "test_accuracy": test["accuracy"],
            "test_loss": test["loss"], "test_correct": test["correct"],
            "trainable": int(model.num_parameters(trainable_only=True)), "steps": cfg["steps"], "batch": cfg["batch"],
            "test_seconds": time.perf_counter() - t0, "seconds": time.perf_counter() - t_start}


# ---- the cached paths against the library encoders ------------------------------------------------------------------
@no_grad()
def check_cached_paths(bert, data: Data, cfg: dict, transe: np.ndarray, states: States, index: dict) -> dict:
    """On 4 test examples: SpeakerScorer's encoders on cached (float16) states against ErnieEncoder /
    KnowBertEncoder on the live model (float32), with the same fusion weights made non-trivial."""
    ex = data.examples["test"][:4]
    idx = list(range(len(ex)))
    live = batch_arrays(ex, idx)
    out = {}
    for kind in ("ernie", "knowbert"):
        row = kind
        model = build_model(row, states, transe, cfg, 0, bert)
        rng = np.random.default_rng(1)
        for name, p in model.named_parameters():              # away from the identity start
            p.data = (p.data + rng.normal(0, 0.05, p.data.shape)).astype(p.data.dtype)
        b = make_batch(ex, states, index["test"], idx, kind)
        cached, _ = model.encode(**{k: Tensor(v) for k, v in b.items()
                                    if k not in ("candidates", "labels", "gold_entities")})
        ids, mask, seg = (Tensor(live[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        if kind == "ernie":
            enc = ErnieEncoder(bert, [model.fusion], model.entities, after_layer=len(bert.encoder.layer) - 1, dea=False)
            h = enc(ids, mask, seg, entity_ids=b["entity_ids"]).last_hidden_state
        else:
            enc = KnowBertEncoder(bert, model.kar, after_layer=cfg["kar_after"])
            h = enc(ids, mask, seg, mention_spans=b["mention_spans"], candidates=b["mention_candidates"],
                    priors=b["priors"]).last_hidden_state
        ref = readout(h, live["attention_mask"]).numpy()
        diff = float(np.abs(cached.numpy() - ref).max())
        out[kind] = {"max_abs_diff": diff, "scale": float(np.abs(ref).max())}
        if not diff < 0.05 * out[kind]["scale"]:
            raise AssertionError(f"{kind}: the cached path differs from the library encoder by {diff:.3g}")
    bert.eval()
    return out


# ---- the report ---------------------------------------------------------------------------------------------------
def _sd(a) -> float:
    return float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")


def report(out: Path, tag: str, cfg: dict) -> dict | None:
    base_path = out / "baselines.json"
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("run-*.json"))]
    if not base_path.exists():
        print(f"no baselines in {out}")
        return None
    base = json.loads(base_path.read_text())
    meta = base["meta"]
    named = np.array(base["test_gold_named"], dtype=bool)
    correct, summary = {}, {}
    for name, label in BASELINES.items():
        c = np.array([base[name]["test_correct"]], dtype=float)                  # (1, N)
        correct[name] = c
        summary[name] = {"label": label, "seeds": 1, "val": base[name]["val_accuracy"], "lr": None,
                         "trainable": len(FEATURES) if name == "graph" else 0}
    for row, (label, kind, _) in ROWS.items():
        rs = sorted([r for r in runs if r["row"] == row], key=lambda r: r["seed"])
        if not rs:
            continue
        correct[row] = np.array([r["test_correct"] for r in rs], dtype=float)    # (S, N)
        summary[row] = {"label": label, "seeds": len(rs), "val": float(np.mean([r["val_accuracy"] for r in rs])),
                        "lr": [r["lr"] for r in rs], "trainable": rs[0]["trainable"],
                        "sec_per_step": float(np.median([g["sec_per_step"] for r in rs for g in r["grid"]])),
                        "seconds": float(sum(r["seconds"] for r in rs))}
    N = len(named)
    rng = np.random.default_rng(0)
    boot = rng.integers(0, N, size=(cfg["bootstrap"], N))
    per_example = {k: c.mean(0) for k, c in correct.items()}                      # mean over seeds, (N,)
    for k, c in correct.items():
        accs = c.mean(1)
        b = per_example[k][boot].mean(1)
        summary[k].update(mean=float(accs.mean()), sd=_sd(accs), per_seed=accs.tolist(),
                          ci=[float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))],
                          unnamed=float(per_example[k][~named].mean()) if (~named).any() else None,
                          named=float(per_example[k][named].mean()) if named.any() else None)
    diffs = {}
    for a, b in COMPARISONS:
        if a in per_example and b in per_example:
            d = per_example[a] - per_example[b]
            bd = d[boot].mean(1)
            diffs[f"{a} − {b}"] = {"mean": float(d.mean()), "ci": [float(np.percentile(bd, 2.5)),
                                                                    float(np.percentile(bd, 97.5))]}
    chance = float(np.mean([1.0 / k for k in base["test_n_candidates"]]))
    lines = [f"# Who speaks next: does knowledge help a frozen MiniLM? ({tag})", "",
             f"Held-out scenes of every play; {meta['sizes']['train']} train / {meta['sizes']['val']} validation / "
             f"{meta['sizes']['test']} test examples; {meta['mean_candidates']['test']:.1f} candidates on average "
             f"(chance {chance:.3f}); speaker named in the input in {meta['gold_named']['test']:.0%} of the test "
             f"examples.  Graph: {meta['graph']}, from the graph scenes only.  Neural rows: {cfg['steps']} steps of "
             f"{cfg['batch']}, lr per row chosen on validation; mean ± s.d. over seeds, 95% bootstrap interval "
             "over test examples (a row's per-example score is its mean over seeds).", "",
             "| row | trainable | lr (per seed) | val acc | test acc | 95% CI | speaker not named | speaker named |",
             "|---|---:|---|---:|---:|---|---:|---:|"]
    for k in list(BASELINES) + list(ROWS):
        if k not in summary or "mean" not in summary[k]:
            continue
        s = summary[k]
        sd = "" if s["seeds"] < 2 else f" ± {s['sd']:.3f}"
        lr = "—" if not s["lr"] else ", ".join(f"{x:g}" for x in s["lr"])
        fmt = (lambda v: "—" if v is None else f"{v:.3f}")
        lines.append(f"| {s['label']} | {s['trainable']:,} | {lr} | {s['val']:.3f} | {s['mean']:.3f}{sd} | "
                     f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] | {fmt(s['unnamed'])} | {fmt(s['named'])} |")
    lines += ["", f"Test examples where the speaker is not linked in the input: {int((~named).sum())}; named: "
                  f"{int(named.sum())}.", "", "Paired differences (test accuracy, 95% bootstrap interval):", "",
              "| difference | mean | 95% CI |", "|---|---:|---|"]
    for k, d in diffs.items():
        lines.append(f"| {k} | {d['mean']:+.3f} | [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] |")
    if "graph" in base:
        lines += ["", f"Graph-only weights (standardised features, λ = {base['graph']['lambda']:g}): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in base["graph"]["weights"].items())]
    if "checks" in base:
        lines += ["", f"Checks: {json.dumps(base['checks'])}"]
    text = "\n".join(lines) + "\n"
    record = json.dumps({"summary": summary, "differences": diffs, "meta": meta, "config": cfg, "chance": chance},
                        indent=1, default=str)
    for dest in [out] + ([RESULTS] if tag == "full" else []):        # the full run's report is the recorded one
        (dest / "knowledge_fusion.md").write_text(text)
        (dest / "knowledge_fusion.json").write_text(record)
        plot(summary, chance, dest / "knowledge_fusion.png")
    print(text)
    return summary


def plot(summary, chance, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in list(BASELINES) + list(ROWS) if k in summary and "mean" in summary[k]]
    fig = Figure(figsize=(9, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    color = {"prior": "tab:gray", "rule": "tab:gray", "graph": "tab:brown", "names": "tab:blue", "probe": "tab:blue",
             "top": "tab:blue", "ernie": "tab:red", "knowbert": "tab:orange", "late": "tab:purple"}
    for i, k in enumerate(keys):
        s = summary[k]
        ax.bar(i, s["mean"], color=color[k], alpha=0.8)
        ax.errorbar(i, s["mean"], yerr=[[s["mean"] - s["ci"][0]], [s["ci"][1] - s["mean"]]], color="black", capsize=3)
        if s.get("unnamed") is not None:
            ax.plot(i, s["unnamed"], "kv", ms=5)
    ax.axhline(chance, color="black", ls=":", lw=1, label="chance (1 / #candidates)")
    ax.plot([], [], "kv", label="speaker not named in the input")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k for k in keys], rotation=0, fontsize=8)
    ax.set_ylabel("test accuracy (95% bootstrap CI)")
    ax.set_title("Who speaks next: text, graph, and their fusions")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ---- --estimate -----------------------------------------------------------------------------------------------------
def estimate(data: Data, bert, tok, cfg: dict, rows, seeds):
    """Time the states, TransE and a few training steps of every row at full size; print the plan."""
    ex = data.examples
    n = min(len(ex["train"]), 4 * cfg["batch"])
    pick = np.random.default_rng(0).choice(len(ex["train"]), size=n, replace=False)
    sample = [ex["train"][int(i)] for i in pick]                  # a random sample: typical lengths
    t0 = time.perf_counter()
    names = name_table(bert, tok, data.kg)
    t_names = time.perf_counter() - t0
    compute_states(bert, tok, data, cfg, examples=ex["val"][:8], stream=io.StringIO(), names=names)   # warm-up
    t0 = time.perf_counter()
    st = compute_states(bert, tok, data, cfg, examples=sample, stream=io.StringIO(), names=names)
    t_states = (time.perf_counter() - t0) / len(sample)
    t0 = time.perf_counter()
    steps = 100
    table, _ = train_transe(data.kg, {**cfg, "transe": {**cfg["transe"], "steps": steps}}, 0)
    t_transe = (time.perf_counter() - t0) / steps
    index = np.arange(len(sample))
    n_all = sum(len(v) for v in ex.values())
    print(f"\nstates: {t_states * 1000:.0f} ms an example (mean {np.mean([len(e.ids) for e in sample]):.0f} tokens) "
          f"-> {n_all} examples {t_states * n_all / 60:.1f} min; TransE {t_transe * 1000:.1f} ms a step", flush=True)
    plan = {"states": t_states * n_all + t_names, "transe": t_transe * cfg["transe"]["steps"] * len(seeds)}
    per_run = {}
    for row in rows:
        kind = ROWS[row][1]
        fn = feature_norm(sample) if kind == "late" else None
        model = build_model(row, st, table, cfg, 0, bert)
        batches = Batches(sample, st, index, kind, cfg["batch"], 0, fn)
        res = Trainer(model, train_config(cfg, 0, 1e-3, steps=8), batches, quiet=True).fit()
        t0 = time.perf_counter()
        evaluate(model, sample, st, index, kind, cfg["eval_batch"], fn)
        t_eval = (time.perf_counter() - t0) / len(sample)
        n_lr = len(cfg["lrs"][ROWS[row][2]])
        run = cfg["steps"] * res["sec_per_step"] + (len(ex["val"]) * n_lr + len(ex["test"])) * t_eval / n_lr
        per_run[row] = (res["sec_per_step"], t_eval, n_lr)
        plan[row] = n_lr * run * len(seeds)
        print(f"  {row:9s} {res['sec_per_step']:.3f} s/step, eval {t_eval * 1000:.1f} ms an example: one lr "
              f"{run / 60:.1f} min; x {n_lr} lrs x {len(seeds)} seeds = {plan[row] / 60:.1f} min", flush=True)
    total = sum(plan.values())
    grid_once = plan["states"] + plan["transe"] + sum(
        per_run[r][0] * cfg["steps"] * (per_run[r][2] + len(seeds) - 1)
        + (len(ex["val"]) * per_run[r][2] + len(ex["test"]) * len(seeds)) * per_run[r][1] for r in per_run)
    print(f"\nplan ({len(seeds)} seeds, the lr grid on seed {seeds[0]}, its choice per row reused for the others; "
          f"the default): {grid_once / 60:.0f} min on one thread (+ data {data.seconds / 60:.1f} min, baselines and "
          f"report < 1 min)")
    print(f"plan with the grid at every seed (--grid-every-seed): {total / 60:.0f} min")
    return plan


# ---- main -----------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny subset, a few steps (the mechanics only)")
    ap.add_argument("--out", default=None, help="default out/knowledge_fusion[_quick]")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0,1)")
    ap.add_argument("--rows", default=None, help=f"comma-separated rows of {list(ROWS)} (default: all)")
    ap.add_argument("--lr-from", type=int, default=None, metavar="SEED",
                    help="no grid: each row takes the lr its run at SEED chose (DIR/run-<row>-SEED.json must exist)")
    ap.add_argument("--grid-every-seed", action="store_true",
                    help="run the lr grid at every seed (default: on the first seed of --seeds; the others reuse "
                         "its choice per row)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run")
    ap.add_argument("--estimate", action="store_true", help="time a few steps of each row at this size, print the plan")
    ap.add_argument("--report", action="store_true", help="only write the table and plot from the runs in --out")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.steps:
        cfg["steps"] = args.steps
    tag = "quick" if args.quick else "full"
    out = Path(args.out or f"out/knowledge_fusion{'_quick' if args.quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        return report(out, tag, cfg)
    rows = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    t_start = time.perf_counter()
    env = _common.machine_env()
    print(f"knowledge_fusion {tag}; cpu: {env['cpu']}, load average {env['loadavg_1_5_15']}", flush=True)
    folder = find_minilm_l6_v2()
    tok = WordPieceTokenizer.from_pretrained(folder)
    bert = Bert.from_pretrained(folder).eval()
    data = Data(cfg, tok)
    if args.estimate:
        return estimate(data, bert, tok, cfg, rows, cfg["seeds"])
    states = cached_states(out, bert, tok, data, cfg)
    n = {s: len(data.examples[s]) for s in ("train", "val", "test")}
    index = {"train": np.arange(n["train"]), "val": n["train"] + np.arange(n["val"]),
             "test": n["train"] + n["val"] + np.arange(n["test"])}
    checks = dict(data.checks)
    checks["cached_vs_library"] = check_cached_paths(bert, data, cfg, cached_transe(out, data.kg, cfg, cfg["seeds"][0]),
                                                     states, index)
    print(f"checks: {json.dumps(checks)}", flush=True)
    base = baselines(data, cfg)
    base.update(meta=data.meta(), checks=checks, test_gold_named=[int(e.gold_named) for e in data.examples["test"]],
                test_n_candidates=[len(e.candidates) for e in data.examples["test"]])
    (out / "baselines.json").write_text(json.dumps(base))
    for k in BASELINES:
        print(f"{BASELINES[k]}: val {base[k]['val_accuracy']:.3f}, test {np.mean(base[k]['test_correct']):.3f}",
              flush=True)
    todo = [(r, s) for s in cfg["seeds"] for r in rows]
    for j, (row, seed) in enumerate(todo):
        path = out / f"run-{row}-{seed}.json"
        if path.exists():
            print(f"{path} exists; skipping", flush=True)
            continue
        lrs = cfg["lrs"][ROWS[row][2]]
        source = args.lr_from if args.lr_from is not None else \
            None if args.grid_every_seed or seed == cfg["seeds"][0] else cfg["seeds"][0]
        if source is not None:
            chosen = out / f"run-{row}-{source}.json"
            if not chosen.exists():
                raise SystemExit(f"the lr of row {row} comes from seed {source}: {chosen} is not there yet")
            lrs = (json.loads(chosen.read_text())["lr"],)
        transe = cached_transe(out, data.kg, cfg, seed)
        print(f"== {ROWS[row][0]}, seed {seed}, lrs {lrs}", flush=True)
        rec = run_row(row, seed, data, states, index, transe, cfg, lrs, bert)
        path.write_text(json.dumps(rec))
        print(f"   {row} seed {seed}: lr {rec['lr']:g}, val {rec['val_accuracy']:.3f}, "
              f"test {rec['test_accuracy']:.3f}; "
              f"{rec['seconds']:.0f} s; {len(todo) - j - 1} left", flush=True)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    return report(out, tag, cfg)


if __name__ == "__main__":
    main()
