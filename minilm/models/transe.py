"""TransE: a relation is a translation between entity embeddings (Bordes et al. 2013,
"Translating Embeddings for Modeling Multi-relational Data").

A knowledge graph is a set of triples (h, r, t): head entity, relation, tail entity, here an
integer array of shape (N, 3).  TransE gives every entity and every relation a vector in R^k
and wants e_h + e_r ≈ e_t for the true triples:

    d(h, r, t) = ‖e_h + e_r − e_t‖_p                                      (T1)  p = 1 or 2
    L = (1/B) Σ_b max(0, γ + d(h_b, r_b, t_b) − d(h'_b, r_b, t'_b))       (T2)  margin ranking loss
        (h', r, t'): the b-th triple with its head or its tail replaced by a random entity
    init: e, r ~ U(−6/√k, 6/√k), then r ← r/‖r‖₂ once                   (Algorithm 1)
    ‖e‖₂ = 1 for every entity                                            (T3)

The entity rows are put on the unit sphere at init too (unless entity_norm="none"): Algorithm 1
renormalises before its first minibatch, so this changes nothing for "renorm", and for "forward"
(below) it starts the stored rows where the paper's are.  Without it they start at norm
≈ 6/√3 ≈ 3.5 whatever k, and every step on the sphere is ~3.5 times shorter.

L2 with ε inside the square root: d = √(Σᵢ xᵢ² + ε), x = e_h + e_r − e_t, ε = ``config.eps``
(1e-12).  Its gradient x/d is then 0 at x = 0 instead of 0/0 — x = 0 is exactly where a
well-fitted positive triple lands — and the distance grows by at most √ε = 1e-6.  L1:
d = Σᵢ |xᵢ|, gradient sign(x) with sign(0) = 0 (F.abs, as PyTorch).

T3 and the Trainer.  Algorithm 1 renormalises every entity row, e ← e/‖e‖₂, before each
minibatch.  minilm's Trainer has no per-step hook, so ``TransEConfig.entity_norm`` chooses:

  "forward" (default)  the rows a distance reads are normalised inside it,
                       ê = e/√(‖e‖₂² + ε), so T1 only ever sees unit vectors and the Trainer's
                       default loss (``model(**batch).loss``) is all it takes.  Differences from
                       the paper: the gradient flows through the normalisation (it is projected
                       onto the sphere's tangent and scaled by 1/‖e‖), and the stored rows are
                       never projected back: a step δ along that tangent gives ‖e + δ‖² =
                       ‖e‖² + ‖δ‖², so their norms only grow, and the step an entity takes on the
                       sphere shrinks by 1/‖e‖ (on the 5-cube of tests/test_transe.py with L1, Adam
                       at lr 0.05: ‖e‖ ≈ 2 after 300 steps, and test MRR 0.92–1.0 over 4 seeds,
                       where "renorm" reaches 1.0).
  "renorm"             the paper: ``renormalize_()`` projects the table's rows onto the unit
                       sphere in place (no gradient); ``transe_loss``, passed to the Trainer as
                       its loss_fn, calls it before each batch's loss.  T1 reads the rows as
                       stored, so between the optimizer step and the next renormalisation they
                       are off the sphere, as in the paper.  With the default loss_fn nothing
                       renormalises: use ``transe_loss``.
  "none"               no constraint (the loss can then be cut by inflating entity norms, the
                       collapse T3 exists to prevent): for ablations.

Link prediction (the paper's "filtered" evaluation protocol): for each test triple (h, r, t) every
entity replaces the tail, (h, r, t'), the candidates are scored, and the rank of the true t is
recorded; heads likewise.  A candidate that is itself a known true triple (train ∪ valid ∪
test), other than the test triple, is removed before ranking (``rank_triples``).  Ties are
scored by the mean of the optimistic and the pessimistic rank (the expected rank under a
random order of the tied candidates); ``ties=`` chooses another.  ``link_metrics`` turns ranks
into MRR, Hits@1/3/10 and mean rank; ``random_ranks``, ``expected_random_metrics`` and
``most_frequent_tail_ranks`` are the baselines, ranked on the same filtered footing.

``CorruptedTripleBatches`` draws T2's (positive, negative) batches for the Trainer.  It and the
ranking functions are pure NumPy on the host.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..configs import check_fields, config_from_dict
from ..nn import Embedding, init
from ..tensor import Generator, Tensor, no_grad
from .base import Model, ModelOutput

ENTITY_NORMS = ("forward", "renorm", "none")
TIE_RULES = ("mean", "optimistic", "pessimistic")


# ---- triples ---------------------------------------------------------------------------------

def check_triples(triples, n_entities: int, n_relations: int | None = None, who: str = "TransE",
                  what: str = "triples") -> np.ndarray:
    """``triples`` as an (N, 3) int64 host array of (head, relation, tail), or a ValueError that names
    the shape, the dtype or the first id outside [0, n_entities) (relations: [0, n_relations))."""
    arr = triples.data if isinstance(triples, Tensor) else triples
    arr = backend.to_numpy(arr) if backend.is_array(arr) else np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{who}: {what} must have shape (N, 3) (head, relation, tail), got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{who}: {what} must hold integer ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    for col, name, high in ((0, "head entity", n_entities), (2, "tail entity", n_entities),
                            (1, "relation", n_relations)):
        if high is None or not arr.size:
            continue
        bad = np.flatnonzero((arr[:, col] < 0) | (arr[:, col] >= high))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{who}: {what} row {i} {tuple(int(v) for v in arr[i])} has {name} id "
                             f"{int(arr[i, col])}, outside [0, {high})" +
                             (f" ({bad.size} rows are out of range)" if bad.size > 1 else ""))
    return arr


def triple_keys(triples: np.ndarray, n_entities: int, n_relations: int) -> np.ndarray:
    """One int64 per triple, (h·R + r)·N + t: equal keys ⇔ equal triples."""
    return (triples[:, 0] * n_relations + triples[:, 1]) * n_entities + triples[:, 2]


def _n_relations(*arrays) -> int:
    return int(max((int(a[:, 1].max()) + 1 for a in arrays if a.size), default=1))


# ---- the model ---------------------------------------------------------------------------------

@dataclass
class TransEConfig:
    """TransE's sizes and loss; defaults are the paper's FB15k setting (k = 50, γ = 1, L1)."""
    n_entities: int
    n_relations: int
    dim: int = 50                    # k
    p_norm: int = 1                  # the dissimilarity of T1: L1 or L2
    margin: float = 1.0              # γ of T2
    entity_norm: str = "forward"     # how T3 is kept: "forward", "renorm" or "none" (module docstring)
    eps: float = 1e-12               # ε inside the L2 square root and the normalisation

    def __post_init__(self):
        check_fields(self)
        for name in ("n_entities", "n_relations", "dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TransEConfig: {name} must be positive, got {getattr(self, name)}")
        if self.p_norm not in (1, 2):
            raise ValueError(f"TransEConfig: p_norm must be 1 or 2, got {self.p_norm}")
        if self.margin < 0 or self.eps < 0:
            raise ValueError(f"TransEConfig: margin and eps must be non-negative, got {self.margin} and {self.eps}")
        if self.entity_norm not in ENTITY_NORMS:
            raise ValueError(f"TransEConfig: entity_norm must be one of {ENTITY_NORMS}, got {self.entity_norm!r}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source=None):
        return config_from_dict(cls, d, source)


@dataclass
class TransEOutput(ModelOutput):
    """ModelOutput with T1's distances: positive_distance (B,), negative_distance (B,) or None;
    ``loss`` is T2 when negatives are given."""
    positive_distance: Tensor | None = None
    negative_distance: Tensor | None = None


class TransE(Model):
    """``out = model(positive, negative)``: T2 over a batch of (B, 3) true triples and their (B, 3)
    corruptions (``CorruptedTripleBatches`` draws both).  Parameters::

        entity_embeddings.weight     (n_entities, k)     e
        relation_embeddings.weight   (n_relations, k)    e_r
    """

    def __init__(self, config: TransEConfig, generator: Generator | None = None):
        super().__init__()
        self.config = config
        n, R, k = config.n_entities, config.n_relations, config.dim
        bound = 6.0 / math.sqrt(k)
        self.entity_embeddings = Embedding(n, k, generator)
        self.relation_embeddings = Embedding(R, k, generator)
        init.uniform_(self.entity_embeddings.weight, -bound, bound, generator)
        init.uniform_(self.relation_embeddings.weight, -bound, bound, generator)
        w = self.relation_embeddings.weight
        w.data = w.data / _row_norms(w.data, 0.0)                 # r ← r/‖r‖₂, once (Algorithm 1)
        if config.entity_norm != "none":
            self.renormalize_()                                   # Algorithm 1's first e ← e/‖e‖₂, here

    # ---- T1 -----------------------------------------------------------------------------
    def entities(self, ids) -> Tensor:
        """The entity vectors of integer ``ids`` (any shape S) → S + (k,); ê = e/√(‖e‖² + ε) with
        entity_norm="forward" (T3 inside the distance)."""
        e = self.entity_embeddings(ids)                           # S + (k,)
        if self.config.entity_norm == "forward":
            e = e / F.sqrt((e * e).sum(axis=-1, keepdims=True) + self.config.eps)
        return e

    def distance(self, h, r, t) -> Tensor:
        """d(h, r, t) = ‖e_h + e_r − e_t‖_p (T1) for integer ids h, r, t of one shape S → S.

        p = 1: Σᵢ |xᵢ|          ∂d/∂x = sign(x)   (0 at xᵢ = 0)
        p = 2: √(Σᵢ xᵢ² + ε)    ∂d/∂x = x / d     (finite, 0, at x = 0)"""
        x = self.entities(h) + self.relation_embeddings(r) - self.entities(t)    # S + (k,)
        if self.config.p_norm == 1:
            return F.abs(x).sum(axis=-1)                                         # S
        return F.sqrt((x * x).sum(axis=-1) + self.config.eps)                    # S

    def forward(self, positive, negative=None) -> TransEOutput:
        """positive, negative: (B, 3) integer (head, relation, tail).  Returns the distances and,
        with negatives, loss = mean_b max(0, γ + d(positive_b) − d(negative_b)) (T2)."""
        pos = self._triples(positive, "positive")                            # (B, 3) on the device
        d_pos = self.distance(pos[:, 0], pos[:, 1], pos[:, 2])              # (B,)
        if negative is None:
            return TransEOutput(positive_distance=d_pos)
        neg = self._triples(negative, "negative")
        if neg.shape != pos.shape:
            raise ValueError(f"TransE: negative of shape {tuple(neg.shape)} does not match positive "
                             f"{tuple(pos.shape)} (one corruption per positive)")
        d_neg = self.distance(neg[:, 0], neg[:, 1], neg[:, 2])              # (B,)
        loss = F.relu(self.config.margin + d_pos - d_neg).mean()            # T2
        return TransEOutput(loss=loss, positive_distance=d_pos, negative_distance=d_neg)

    def _triples(self, x, what):
        """Check (B, 3) ids on the host (ValueError naming the shape or the id), return them on the device."""
        c = self.config
        host = check_triples(x, c.n_entities, c.n_relations, "TransE", what)
        if not host.shape[0]:
            raise ValueError(f"TransE: {what} is an empty batch, shape {host.shape}")
        if isinstance(x, Tensor) and x.device == self.device:
            return x.data
        return backend.to_device(host, self.device)

    # ---- T3, the paper's way -------------------------------------------------------------
    @no_grad()
    def renormalize_(self):
        """e ← e/‖e‖₂ for every entity row, in place and outside autograd (Algorithm 1's first line,
        run before each minibatch by ``transe_loss``).  Returns the model."""
        w = self.entity_embeddings.weight
        w.data = (w.data / _row_norms(w.data, self.config.eps)).astype(w.dtype, copy=False)
        return self

    # ---- scoring every candidate (link prediction) ------------------------------------------
    def entity_table(self) -> np.ndarray:
        """(n_entities, k) float64 host copy of the entity vectors T1 uses; unit rows unless
        entity_norm="none" (with "renorm" this is what the next minibatch would read)."""
        e = backend.to_numpy(self.entity_embeddings.weight.data).astype(np.float64)
        return e if self.config.entity_norm == "none" else e / _row_norms(e, self.config.eps)

    def scorer(self):
        """A score function for ``rank_triples``: ``score(triples (B, 3), side) → (B, n_entities)``,
        −d(h, r, j) for side "tail" and −d(j, r, t) for side "head", in float64 on the host from one
        copy of the tables:

            tail: q = e_h + e_r,  d(h, r, j) = ‖q − e_j‖_p;    head: q = e_t − e_r,  d(j, r, t) = ‖e_j − q‖_p

        Each (B, N) block of distances is one call of SciPy's cdist, which sums |q − e_j| (or its
        square) directly: no ‖q‖² + ‖e‖² − 2q·e cancellation, so a true triple's score is T1's
        value to rounding."""
        from scipy.spatial.distance import cdist           # on first use: SciPy is slow to import

        E = self.entity_table()                                                            # (N, k)
        Rel = backend.to_numpy(self.relation_embeddings.weight.data).astype(np.float64)   # (R, k)
        p, eps = self.config.p_norm, self.config.eps

        def score(triples, side):
            triples = np.asarray(triples)
            if side == "tail":
                q = E[triples[:, 0]] + Rel[triples[:, 1]]                  # (B, k)
            else:
                q = E[triples[:, 2]] - Rel[triples[:, 1]]                  # (B, k)
            if p == 1:
                return -cdist(q, E, "cityblock")                           # (B, N)
            return -np.sqrt(cdist(q, E, "sqeuclidean") + eps)              # (B, N)
        return score


def _row_norms(a, eps):
    """√(Σ a² + ε) over each row, keeping the axis: (n, k) → (n, 1)."""
    xp = backend.get_array_module(a)
    return xp.sqrt((a * a).sum(axis=1, keepdims=True) + eps)


def transe_loss(model: TransE, batch: dict):
    """The Trainer's ``loss_fn`` for entity_norm="renorm": Algorithm 1's e ← e/‖e‖₂ over every entity,
    then T2 on the batch.  For the other settings it is the default loss."""
    if model.config.entity_norm == "renorm":
        model.renormalize_()
    return model(**batch).loss


# ---- T2's batches ----------------------------------------------------------------------------

class CorruptedTripleBatches:
    """``batch = batches()`` → {"positive": (B, 3) int64, "negative": (B, 3) int64}.

    Each positive is a uniform draw (with replacement) from ``triples``; its negative replaces the
    head, or else the tail, by an entity drawn uniformly from the n_entities − 1 others, so it
    differs from its positive in exactly one place.  The side:

        uniform ("unif"):               P(head) = ½
        bernoulli=True ("bern", Wang et al. 2014, TransH):
                                        P(head) = tph / (tph + hpt)   per relation, where
        tph = #triples of r / #distinct heads of r,  hpt = #triples of r / #distinct tails of r

    so a one-to-many relation (large tph) corrupts its head, which is less likely to give a
    true triple by accident.  With ``known`` (an (M, 3) array, e.g. train ∪ valid) a negative that
    is a known triple, or one of ``triples``, is redrawn (same side, new entity) until it is not:
    filtered negatives.  ``state_dict()`` / ``load_state_dict()`` resume the exact stream.
    """

    def __init__(self, triples, n_entities: int, batch_size: int, seed: int = 0, known=None,
                 bernoulli: bool = False, n_relations: int | None = None, max_tries: int = 100):
        who = "CorruptedTripleBatches"
        if isinstance(n_entities, bool) or not isinstance(n_entities, (int, np.integer)) or n_entities < 2:
            raise ValueError(f"{who}: n_entities must be an integer ≥ 2 (a corruption needs another entity), "
                             f"got {n_entities!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"{who}: batch_size must be a positive integer, got {batch_size!r}")
        self.n_entities, self.batch_size = int(n_entities), int(batch_size)
        self.triples = check_triples(triples, self.n_entities, n_relations, who, "triples")
        if not len(self.triples):
            raise ValueError(f"{who}: no triples to draw from (shape {self.triples.shape})")
        known = None if known is None else check_triples(known, self.n_entities, n_relations, who, "known")
        self.n_relations = int(n_relations) if n_relations is not None else _n_relations(
            self.triples, *(() if known is None else (known,)))
        self.bernoulli, self.max_tries, self.seed = bool(bernoulli), int(max_tries), seed
        self.p_head = _bernoulli_head_probability(self.triples, self.n_relations) if bernoulli \
            else np.full(self.n_relations, 0.5)                                  # (R,)
        self.known_keys = None if known is None else np.unique(np.concatenate([
            triple_keys(known, self.n_entities, self.n_relations),
            triple_keys(self.triples, self.n_entities, self.n_relations)]))     # sorted, for searchsorted
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0

    def __call__(self) -> dict:
        B, n = self.batch_size, self.n_entities
        positive = self.triples[self.rng.integers(0, len(self.triples), size=B)]     # (B, 3)
        column = np.where(self.rng.random(B) < self.p_head[positive[:, 1]], 0, 2)    # (B,) 0 head, 2 tail
        negative = positive.copy()
        todo = np.arange(B)
        for _ in range(self.max_tries):
            old = positive[todo, column[todo]]
            new = self.rng.integers(0, n - 1, size=len(todo))
            new += new >= old                                  # uniform over the n − 1 other entities
            negative[todo, column[todo]] = new
            if self.known_keys is None:
                break
            todo = todo[_contains(self.known_keys, triple_keys(negative[todo], n, self.n_relations))]
            if not len(todo):
                break
        else:
            b = int(todo[0])
            side = "head" if column[b] == 0 else "tail"
            raise RuntimeError(f"CorruptedTripleBatches: {self.max_tries} draws of a new {side} for "
                               f"{tuple(int(v) for v in positive[b])} all gave known triples; is every "
                               f"{side} of it known?  Lower the filtering or raise max_tries")
        self.batches_drawn += 1
        return {"positive": positive, "negative": negative}

    def __iter__(self):
        return self

    def __next__(self):
        return self()

    def _identity(self) -> dict:
        """What decides the batches besides the RNG: a resumed state must have been saved with these."""
        known = -1 if self.known_keys is None else zlib.crc32(self.known_keys.tobytes())
        return {"batch_size": self.batch_size, "n_entities": self.n_entities, "n_relations": self.n_relations,
                "bernoulli": self.bernoulli, "triples_crc32": zlib.crc32(self.triples.tobytes()),
                "known_crc32": known}

    def state_dict(self) -> dict:
        """Plain JSON-able state: the RNG's exact position and what it was drawing."""
        return {**self._identity(), "seed": self.seed, "batches_drawn": self.batches_drawn,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict):
        """Continue from ``state``: the next batch is the one that would have followed it.  A state
        saved over other triples or settings is refused (ValueError), and nothing changes.
        (minilm.data.batches.restore_sampler does this for the token samplers; models may not import data.)"""
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(f"CorruptedTripleBatches state was saved with {key}={state.get(key)!r}, this one "
                                 f"has {key}={value!r}; resuming would draw different batches")
        kind = type(self.rng.bit_generator).__name__
        if not isinstance(state.get("rng"), dict) or state["rng"].get("bit_generator") != kind:
            raise ValueError(f"CorruptedTripleBatches state holds no {kind} generator state")
        self.rng.bit_generator.state = state["rng"]
        self.seed = state.get("seed", self.seed)
        self.batches_drawn = int(state.get("batches_drawn", 0))


def _bernoulli_head_probability(triples: np.ndarray, n_relations: int) -> np.ndarray:
    """(R,) P(corrupt the head) = tph / (tph + hpt) per relation; ½ for a relation with no triples."""
    count = np.bincount(triples[:, 1], minlength=n_relations).astype(np.float64)            # (R,)
    heads = np.bincount(np.unique(triples[:, [1, 0]], axis=0)[:, 0], minlength=n_relations)  # distinct (r, h)
    tails = np.bincount(np.unique(triples[:, [1, 2]], axis=0)[:, 0], minlength=n_relations)  # distinct (r, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        tph, hpt = count / heads, count / tails
        p = tph / (tph + hpt)
    return np.where(count > 0, p, 0.5)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """keys ∈ sorted_keys, elementwise (bool, keys' shape)."""
    i = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[i] == keys


# ---- link prediction, filtered ---------------------------------------------------------------

class _Groups:
    """Known triples grouped by the two ids a ranking fixes: ``side="tail"`` groups (h, r) → tails,
    ``side="head"`` groups (r, t) → heads.  ``members(rows)`` → (row index, entity) pairs of every
    known triple that shares each row's fixed ids."""

    def __init__(self, known: np.ndarray, side: str, n_entities: int, n_relations: int, weights=None):
        self.side, self.n, self.R = side, n_entities, n_relations
        keys = self.key(known)                                           # (M,)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.values = known[order, 2 if side == "tail" else 0]           # the entity a candidate replaces
        self.weights = None if weights is None else weights[order]

    def key(self, rows):
        if self.side == "tail":
            return rows[:, 0] * self.R + rows[:, 1]                      # (h, r)
        return rows[:, 1] * self.n + rows[:, 2]                          # (r, t)

    def members(self, rows):
        q = self.key(rows)
        lo, hi = np.searchsorted(self.keys, q, "left"), np.searchsorted(self.keys, q, "right")
        counts = hi - lo                                                 # (B,)
        row = np.repeat(np.arange(len(rows)), counts)                    # (Σ counts,)
        start = np.repeat(lo - np.cumsum(counts) + counts, counts)       # each group's lo, per member
        pos = start + np.arange(counts.sum())
        return row, pos


def _target(rows, side):
    return rows[:, 2] if side == "tail" else rows[:, 0]


def _filter_mask(groups: _Groups, rows: np.ndarray) -> np.ndarray:
    """(B, n_entities) bool: True at the candidates to drop, the known triples other than the row itself."""
    mask = np.zeros((len(rows), groups.n), dtype=bool)
    row, pos = groups.members(rows)
    mask[row, groups.values[pos]] = True
    mask[np.arange(len(rows)), _target(rows, groups.side)] = False      # the test triple stays
    return mask


def _unique_triples(arrays, n_entities, n_relations):
    known = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    _, first = np.unique(triple_keys(known, n_entities, n_relations), return_index=True)
    return known[np.sort(first)]


def rank_triples(scorer, test, known, n_entities: int, batch: int = 256, ties: str = "mean",
                 n_relations: int | None = None) -> dict:
    """Filtered ranks of every test triple: {"head": (M,) float64, "tail": (M,) float64}.

    scorer  a TransE (its ``scorer()`` is used) or a function ``score(triples (B, 3), side) →
            (B, n_entities)`` of scores, higher = more plausible: side "tail" scores (h_b, r_b, j)
            in column j, side "head" scores (j, r_b, t_b)
    known   (K, 3) every true triple (train ∪ valid ∪ test); duplicates are fine

    For the tail of (h, r, t) with score s = score(h, r, t), over the candidates j ≠ t such that
    (h, r, j) is not in ``known`` (the filtered setting; the test triple itself always stays):

        higher = #{j : s_j > s},   tied = #{j : s_j = s}
        rank = 1 + higher + tied/2         ties="mean" (the expected rank under a random order of ties)
               1 + higher                  ties="optimistic"
               1 + higher + tied           ties="pessimistic"

    heads alike.  Scores are compared exactly as the scorer returns them; a NaN score is an error.
    ``batch`` test triples are scored at a time ((batch, n_entities) scores and masks in memory)."""
    if ties not in TIE_RULES:
        raise ValueError(f"rank_triples: ties must be one of {TIE_RULES}, got {ties!r}")
    test = check_triples(test, n_entities, n_relations, "rank_triples", "test")
    known = check_triples(known, n_entities, n_relations, "rank_triples", "known")
    R = int(n_relations) if n_relations is not None else _n_relations(test, known)
    score = scorer.scorer() if hasattr(scorer, "scorer") else scorer
    ranks = {}
    for side in ("head", "tail"):
        groups = _Groups(known, side, n_entities, R)
        out = np.empty(len(test))
        for start in range(0, len(test), batch):
            rows = test[start:start + batch]                                     # (B, 3)
            s = np.asarray(score(rows, side))
            if s.shape != (len(rows), n_entities):
                raise ValueError(f"rank_triples: the scorer returned shape {s.shape} for side {side!r}, "
                                 f"expected (batch, n_entities) = ({len(rows)}, {n_entities})")
            keep = ~_filter_mask(groups, rows)                                   # (B, N)
            s_true = s[np.arange(len(rows)), _target(rows, side)]                # (B,)
            if np.isnan(s_true).any() or np.isnan(s[keep]).any():
                raise ValueError(f"rank_triples: the scorer returned NaN scores ({side} side, test rows "
                                 f"{start}..{start + len(rows) - 1})")
            higher = ((s > s_true[:, None]) & keep).sum(axis=1)
            tied = ((s == s_true[:, None]) & keep).sum(axis=1) - 1               # not the true candidate
            extra = {"mean": tied / 2.0, "optimistic": 0, "pessimistic": tied}[ties]
            out[start:start + len(rows)] = 1 + higher + extra
        ranks[side] = out
    return ranks


def link_metrics(ranks, ks=(1, 3, 10)) -> dict:
    """MRR = mean 1/rank, Hits@k = fraction with rank ≤ k, mean rank, and n, over ``ranks``: an array, or
    rank_triples' {"head", "tail"} dict (both sides pooled, as the paper reports them).  With ties="mean"
    ranks can be fractional: Hits@k counts the rank as it is (10.5 is not in the top 10)."""
    r = np.concatenate([np.asarray(ranks["head"]), np.asarray(ranks["tail"])]) if isinstance(ranks, dict) \
        else np.asarray(ranks, dtype=np.float64).ravel()
    if not r.size:
        raise ValueError("link_metrics: no ranks")
    if (r < 1).any():
        raise ValueError(f"link_metrics: ranks start at 1, got {r.min()}")
    out = {"mrr": float(np.mean(1.0 / r))}
    out.update({f"hits@{k}": float(np.mean(r <= k)) for k in ks})
    out.update(mean_rank=float(r.mean()), n=int(r.size))
    return out


# ---- baselines -------------------------------------------------------------------------------

def _candidates(test, known, n_entities, n_relations, who):
    """{"head", "tail"}: (M,) the number of filtered candidates of each test triple, the true one included."""
    test = check_triples(test, n_entities, n_relations, who, "test")
    known = check_triples(known, n_entities, n_relations, who, "known")
    R = int(n_relations) if n_relations is not None else _n_relations(test, known)
    known = _unique_triples([known], n_entities, R)
    out = {}
    for side in ("head", "tail"):
        groups = _Groups(known, side, n_entities, R)
        row, pos = groups.members(test)
        others = groups.values[pos] != _target(test, side)[row]             # known, not the test triple
        out[side] = n_entities - np.bincount(row[others], minlength=len(test))
    return out


def random_ranks(test, known, n_entities: int, seed: int = 0, n_relations: int | None = None) -> dict:
    """The filtered ranks of a scorer that orders the candidates uniformly at random: with n filtered
    candidates (the true one included) the rank is uniform on {1, …, n}, drawn here with ``seed``.
    {"head", "tail"} like rank_triples; ``expected_random_metrics`` gives the exact expectations."""
    n = _candidates(test, known, n_entities, n_relations, "random_ranks")
    rng = np.random.default_rng(seed)
    return {side: (rng.integers(0, n[side]) + 1).astype(np.float64) for side in ("head", "tail")}


def expected_random_metrics(test, known, n_entities: int, ks=(1, 3, 10), n_relations: int | None = None) -> dict:
    """link_metrics' values in expectation over a uniformly random scorer, exactly: for n candidates
    E[1/rank] = H_n / n (H_n = Σ_{i≤n} 1/i), P(rank ≤ k) = min(k, n)/n, E[rank] = (n + 1)/2."""
    c = _candidates(test, known, n_entities, n_relations, "expected_random_metrics")
    n = np.concatenate([c["head"], c["tail"]]).astype(np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_entities + 1))])   # H_0 … H_N
    out = {"mrr": float(np.mean(harmonic[n.astype(np.int64)] / n))}
    out.update({f"hits@{k}": float(np.mean(np.minimum(k, n) / n)) for k in ks})
    out.update(mean_rank=float(np.mean((n + 1) / 2)), n=int(n.size))
    return out


def most_frequent_tail_ranks(train, test, known, n_entities: int, batch: int = 256, ties: str = "mean",
                             n_relations: int | None = None) -> dict:
    """Filtered ranks of the frequency baseline: a candidate tail j of (h, r, ·) scores the number of
    training triples (·, r, j) — how often j is a tail of r —, a candidate head j of (·, r, t) the
    number of (j, r, ·); h and t themselves are ignored.  Entities never seen with r all score 0, so
    ties are many: they are ranked by ``ties`` (default: the mean rule of rank_triples)."""
    who = "most_frequent_tail_ranks"
    train = check_triples(train, n_entities, n_relations, who, "train")
    test = check_triples(test, n_entities, n_relations, who, "test")
    known = check_triples(known, n_entities, n_relations, who, "known")
    R = int(n_relations) if n_relations is not None else _n_relations(train, test, known)
    counts = {}
    for side, col in (("tail", 2), ("head", 0)):
        pairs, c = np.unique(train[:, 1] * n_entities + train[:, col], return_counts=True)   # (r, j) → count
        counts[side] = (pairs // n_entities, pairs % n_entities, c)

    def score(rows, side):
        rel, ent, c = counts[side]                                   # sorted by relation, then entity
        lo, hi = np.searchsorted(rel, rows[:, 1], "left"), np.searchsorted(rel, rows[:, 1], "right")
        k = hi - lo
        row = np.repeat(np.arange(len(rows)), k)
        pos = np.repeat(lo - np.cumsum(k) + k, k) + np.arange(k.sum())
        s = np.zeros((len(rows), n_entities))
        s[row, ent[pos]] = c[pos]                                    # (B, N) counts of r's tails (heads)
        return s
    return rank_triples(score, test, known, n_entities, batch=batch, ties=ties, n_relations=R)
