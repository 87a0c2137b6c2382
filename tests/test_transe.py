"""TransE (minilm/models/transe.py): its gradients (central differences, PyTorch), the margin loss T2,
training with the shared Trainer on a graph TransE can represent exactly, the filtered ranks and
their tie rule by hand, the baselines by hand, and the corrupted-triple sampler."""
import json
import math

import numpy as np
import pytest

import minilm
from minilm.models.transe import (CorruptedTripleBatches, TransE, TransEConfig, _bernoulli_head_probability,
                                  expected_random_metrics, link_metrics, most_frequent_tail_ranks, random_ranks,
                                  rank_triples, transe_loss)
from minilm.tensor import Generator, no_grad
from minilm.train import TrainConfig, Trainer
from helpers import host

NORMS = ("forward", "renorm", "none")


def hypercube(m):
    """The m-cube: 2^m entities (vertex bit patterns) and 2m relations, "set bit j" (v → v | 2^j) and
    "clear bit j" (back).  TransE represents it exactly with unit entities: e_v = (±1, …, ±1)/√m
    (+ where bit j is set) and e_r = ±(2/√m) u_j."""
    triples = []
    for v in range(2 ** m):
        for j in range(m):
            if not v >> j & 1:
                triples += [(v, j, v | 1 << j), (v | 1 << j, m + j, v)]
    return np.array(triples, dtype=np.int64), 2 ** m, 2 * m


def exact_cube_model(m, p_norm, entity_norm, margin=0.5):
    """A float64 TransE holding the exact embedding of the m-cube."""
    _, n, R = hypercube(m)
    model = TransE(TransEConfig(n, R, dim=m, p_norm=p_norm, margin=margin, entity_norm=entity_norm)).double()
    bits = (np.arange(n)[:, None] >> np.arange(m)) & 1                             # (n, m)
    model.entity_embeddings.weight.data = (2.0 * bits - 1) / math.sqrt(m)
    model.relation_embeddings.weight.data = np.concatenate([np.eye(m), -np.eye(m)]) * 2 / math.sqrt(m)
    return model


def generic_model(p_norm, entity_norm, n=6, R=3, k=4, seed=0):
    """A float64 TransE at a generic point (rows off the sphere, so "renorm" and "none" differ from "forward")."""
    model = TransE(TransEConfig(n, R, dim=k, p_norm=p_norm, entity_norm=entity_norm)).double()
    rng = np.random.default_rng(seed)
    model.entity_embeddings.weight.data = rng.standard_normal((n, k)) * 0.8
    model.relation_embeddings.weight.data = rng.standard_normal((R, k)) * 0.8
    return model


POS = np.array([[0, 0, 1], [2, 1, 3], [4, 2, 5], [1, 0, 2], [3, 2, 0]])           # entities repeat across rows
NEG = np.array([[5, 0, 1], [2, 1, 0], [4, 2, 3], [1, 0, 4], [2, 2, 0]])


def margin_between(model, pos, neg):
    """A γ with γ + d⁺ − d⁻ at least 0.1 from the hinge's kink on every row, and rows on both sides of it."""
    with no_grad():
        out = model(pos, neg)
    gap = np.sort(out.negative_distance.numpy() - out.positive_distance.numpy())   # rows are active iff γ > gap
    widest = int(np.argmax(np.diff(gap)))
    assert gap[widest + 1] - gap[widest] > 0.2, f"no room between hinge kinks: {gap}"
    return float(gap[widest] + gap[widest + 1]) / 2


def translation_residuals(model, triples):
    """x = e_h + e_r − e_t of each row, (B, k), as T1 sees it."""
    with no_grad():
        t = np.asarray(triples)
        return (model.entities(t[:, 0]) + model.relation_embeddings(t[:, 1]) - model.entities(t[:, 2])).numpy()


# ---- gradients ------------------------------------------------------------------------------------

@pytest.mark.parametrize("entity_norm", NORMS)
@pytest.mark.parametrize("p_norm", [1, 2])
def test_gradcheck_both_tables(p_norm, entity_norm):
    model = generic_model(p_norm, entity_norm)
    model.config.margin = margin_between(model, POS, NEG)
    if p_norm == 1:   # |x| has a kink at 0: the point must be well away from it (ε = 1e-6 steps)
        assert np.abs(translation_residuals(model, np.concatenate([POS, NEG]))).min() > 1e-3
    with no_grad():
        out = model(POS, NEG)
    hinge = model.config.margin + out.positive_distance.numpy() - out.negative_distance.numpy()
    assert (hinge > 0.1).any() and (hinge < -0.1).any() and (np.abs(hinge) > 0.1).all()
    pos, neg = minilm.tensor(POS), minilm.tensor(NEG)
    assert minilm.gradcheck_module(model, (pos, neg), fn=lambda out: out.loss)


def test_abs_gradient_is_sign_with_zero_at_zero():
    x = minilm.tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    y = abs(x)                                               # Tensor.__abs__ is F.abs
    np.testing.assert_array_equal(y.numpy(), [2.0, 0.0, 3.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [-1.0, 0.0, 1.0])


def test_l2_distance_has_a_finite_gradient_at_zero():
    """A positive the model fits exactly (x = 0): d = √ε, ∂d/∂x = x/d = 0, not NaN."""
    model = exact_cube_model(3, 2, "none")
    d = model.distance(np.array([0]), np.array([0]), np.array([1]))
    assert abs(d.item() - math.sqrt(model.config.eps)) < 1e-15
    d.sum().backward()
    for table in (model.entity_embeddings.weight, model.relation_embeddings.weight):
        assert np.isfinite(table.grad.numpy()).all() and np.abs(table.grad.numpy()).max() < 1e-9


@pytest.mark.parametrize("entity_norm", ["forward", "none"])
@pytest.mark.parametrize("p_norm", [1, 2])
def test_loss_and_gradient_are_zero_when_negatives_are_beyond_the_margin(p_norm, entity_norm):
    triples, n, _ = hypercube(3)
    model = exact_cube_model(3, p_norm, entity_norm, margin=0.5)
    neg = triples.copy()
    neg[:, 2] = (triples[:, 2] + 3) % n                       # another vertex: at distance ≥ 2/√3 > γ + √ε
    out = model(triples, neg)
    assert (out.negative_distance.numpy() - out.positive_distance.numpy() > 0.5 + 0.1).all()
    assert out.loss.item() == 0.0
    out.loss.backward()
    for table in (model.entity_embeddings.weight, model.relation_embeddings.weight):
        assert table.grad is None or not np.any(table.grad.numpy())


@pytest.mark.parametrize("entity_norm", NORMS)
@pytest.mark.parametrize("p_norm", [1, 2])
def test_matches_torch(p_norm, entity_norm):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
    tF = torch.nn.functional
    model = generic_model(p_norm, entity_norm, seed=1)
    model.config.margin = margin_between(model, POS, NEG)
    E = torch.from_numpy(model.entity_embeddings.weight.numpy().copy()).requires_grad_()
    Rel = torch.from_numpy(model.relation_embeddings.weight.numpy().copy()).requires_grad_()

    def distance(t):
        t = torch.from_numpy(t)
        ent = (lambda i: tF.normalize(E[i], dim=-1)) if entity_norm == "forward" else (lambda i: E[i])
        return torch.linalg.vector_norm(ent(t[:, 0]) + Rel[t[:, 1]] - ent(t[:, 2]), ord=p_norm, dim=-1)

    d_pos, d_neg = distance(POS), distance(NEG)
    ref = tF.margin_ranking_loss(d_neg, d_pos, torch.ones_like(d_pos), margin=model.config.margin)
    ref.backward()
    out = model(POS, NEG)
    out.loss.backward()
    np.testing.assert_allclose(out.loss.item(), ref.item(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.positive_distance.numpy(), d_pos.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(out.negative_distance.numpy(), d_neg.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.entity_embeddings.weight.grad.numpy(), E.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.relation_embeddings.weight.grad.numpy(), Rel.grad.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("entity_norm", NORMS)
def test_every_device_computes_what_the_cpu_does(device, entity_norm):
    results = []
    for where in ("cpu", device):
        model = generic_model(1, entity_norm, seed=3).to(where)
        loss = transe_loss(model, {"positive": POS, "negative": NEG})
        loss.backward()
        assert loss.device == where
        results.append([loss.item(), host(model.entity_embeddings.weight.grad),
                        host(model.relation_embeddings.weight.grad), rank_triples(model, POS, POS, 6)["tail"]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


# ---- init, T3 -------------------------------------------------------------------------------------

def test_init_and_renormalisation():
    k = 20
    model = TransE(TransEConfig(30, 4, dim=k, entity_norm="renorm"), generator=Generator(0))
    assert np.allclose(np.linalg.norm(model.relation_embeddings.weight.numpy(), axis=1), 1, atol=1e-6)
    assert np.allclose(np.linalg.norm(model.entity_embeddings.weight.numpy(), axis=1), 1, atol=1e-6)
    raw = TransE(TransEConfig(30, 4, dim=k, entity_norm="none"), generator=Generator(0))
    w = raw.entity_embeddings.weight.numpy()
    assert np.abs(w).max() <= 6 / math.sqrt(k) and np.abs(w).max() > 0.9 * 6 / math.sqrt(k)   # U(−6/√k, 6/√k)
    model.entity_embeddings.weight.data = model.entity_embeddings.weight.data * 3
    batch = {"positive": POS[:2], "negative": NEG[:2]}
    transe_loss(model, batch)                                # renormalises, then the loss
    assert np.allclose(np.linalg.norm(model.entity_embeddings.weight.numpy(), axis=1), 1, atol=1e-6)


def test_scorer_agrees_with_the_distance():
    triples, n, _ = hypercube(3)
    for p_norm in (1, 2):
        model = generic_model(p_norm, "forward", n=n, R=6, k=5, seed=2)
        score = model.scorer()
        with no_grad():
            d = model(triples).positive_distance.numpy()
        rows = np.arange(len(triples))
        np.testing.assert_allclose(-score(triples, "tail")[rows, triples[:, 2]], d, rtol=1e-12)
        np.testing.assert_allclose(-score(triples, "head")[rows, triples[:, 0]], d, rtol=1e-12)


# ---- training on a graph TransE represents exactly ---------------------------------------------------

@pytest.mark.parametrize("p_norm, entity_norm", [(2, "forward"), (1, "renorm")])
def test_trains_to_filtered_mrr_above_09_and_beats_the_baselines(p_norm, entity_norm):
    triples, n, R = hypercube(5)                      # 32 entities, 10 relations, 160 triples
    perm = np.random.default_rng(0).permutation(len(triples))
    test, train = triples[perm[:16]], triples[perm[16:]]
    model = TransE(TransEConfig(n, R, dim=16, p_norm=p_norm, margin=1.0, entity_norm=entity_norm),
                   generator=Generator(0))
    batches = CorruptedTripleBatches(train, n, 32, seed=0, known=train)
    config = TrainConfig(max_steps=300, batch_size=32, learning_rate=0.05, warmup_steps=10, weight_decay=0.0,
                         eval_interval=0, seed=0)
    loss_fn = transe_loss if entity_norm == "renorm" else None      # "forward" needs no hook
    result = Trainer(model, config, batches, loss_fn=loss_fn, quiet=True).fit()
    assert result["loss"][-1] < 0.1 * result["loss"][0]
    ours = link_metrics(rank_triples(model, test, triples, n))
    frequent = link_metrics(most_frequent_tail_ranks(train, test, triples, n))
    sampled = link_metrics(random_ranks(test, triples, n, seed=0))
    expected = expected_random_metrics(test, triples, n)
    assert ours["mrr"] > 0.9, ours
    assert ours["mrr"] > max(frequent["mrr"], sampled["mrr"], expected["mrr"]) + 0.5
    assert ours["mean_rank"] < min(frequent["mean_rank"], sampled["mean_rank"], expected["mean_rank"])


def test_the_exact_embedding_ranks_every_triple_first():
    triples, n, _ = hypercube(4)
    for p_norm in (1, 2):
        ranks = rank_triples(exact_cube_model(4, p_norm, "forward"), triples, triples, n)
        assert link_metrics(ranks) == {"mrr": 1.0, "hits@1": 1.0, "hits@3": 1.0, "hits@10": 1.0,
                                       "mean_rank": 1.0, "n": 2 * len(triples)}


# ---- filtered ranks by hand --------------------------------------------------------------------------

def table_scorer(scores):
    """score(rows, side) from a dict {(side, h, r, t): the (N,) scores of that test triple}."""
    return lambda rows, side: np.array([scores[(side,) + tuple(int(v) for v in row)] for row in rows])


HAND_TEST = np.array([[0, 0, 1], [2, 0, 3]])
HAND_KNOWN = np.array([[0, 0, 1], [0, 0, 2], [3, 0, 1]])      # (2, 0, 3) is not known: it still stays
HAND_SCORES = {
    # (0, 0, ·): t = 1 scores 0.7; 2 scores more but (0, 0, 2) is known → dropped; 3 ties; 0 is below
    ("tail", 0, 0, 1): [0.5, 0.7, 0.9, 0.7],
    # (·, 0, 1): h = 0 scores 0.2; 3 scores more but (3, 0, 1) is known → dropped; 1 is above; 2 below
    ("head", 0, 0, 1): [0.2, 0.4, 0.1, 0.8],
    # (2, 0, ·): everything ties, nothing known
    ("tail", 2, 0, 3): [1.0, 1.0, 1.0, 1.0],
    # (·, 0, 3): h = 2 scores 0.3; 3 is above; 0 and 1 tie
    ("head", 2, 0, 3): [0.3, 0.3, 0.3, 0.9],
}


@pytest.mark.parametrize("ties, head, tail", [("mean", [2, 3], [1.5, 2.5]),
                                              ("optimistic", [2, 2], [1, 1]),
                                              ("pessimistic", [2, 4], [2, 4])])
def test_filtered_ranks_by_hand(ties, head, tail):
    ranks = rank_triples(table_scorer(HAND_SCORES), HAND_TEST, HAND_KNOWN, 4, ties=ties, batch=1)
    np.testing.assert_array_equal(ranks["head"], head)
    np.testing.assert_array_equal(ranks["tail"], tail)


def test_link_metrics_by_hand():
    m = link_metrics({"head": np.array([2.0, 3.0]), "tail": np.array([1.5, 2.5])})
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 1.5 + 1 / 2.5) / 4)
    assert (m["hits@1"], m["hits@3"], m["hits@10"], m["mean_rank"], m["n"]) == (0.0, 1.0, 1.0, 2.25, 4)
    assert link_metrics([1, 4, 11])["hits@10"] == pytest.approx(2 / 3)


# ---- baselines by hand ---------------------------------------------------------------------------

BASE_TRAIN = np.array([[0, 0, 1], [2, 0, 1], [3, 0, 2], [0, 1, 3]])
BASE_TEST = np.array([[1, 0, 2], [3, 1, 3]])
BASE_KNOWN = np.concatenate([BASE_TRAIN, BASE_TEST])


def test_most_frequent_ranks_by_hand():
    # r = 0: tail counts [0, 2, 1, 0], head counts [1, 0, 1, 1];  r = 1: tails [0, 0, 0, 1], heads [1, 0, 0, 0]
    # (1, 0, 2) tail: t = 2 scores 1; 1 scores 2 and (1, 0, 1) is unknown                        → rank 2
    #           head: h = 1 scores 0; 0, 2, 3 score 1; (3, 0, 2) is known → dropped             → rank 3
    # (3, 1, 3) tail: t = 3 scores 1, the only non-zero                                          → rank 1
    #           head: h = 3 scores 0; 0 scores 1 but (0, 1, 3) is known; 1 and 2 tie at 0        → 1 + 2/2 = 2
    ranks = most_frequent_tail_ranks(BASE_TRAIN, BASE_TEST, BASE_KNOWN, 4)
    np.testing.assert_array_equal(ranks["tail"], [2, 1])
    np.testing.assert_array_equal(ranks["head"], [3, 2])
    assert most_frequent_tail_ranks(BASE_TRAIN, BASE_TEST, BASE_KNOWN, 4, ties="pessimistic")["head"][1] == 3


def test_random_baseline_by_hand():
    # filtered candidates, the true one included: (1, 0, 2) tail 4, head 3 ((3, 0, 2) known);
    # (3, 1, 3) tail 4, head 3 ((0, 1, 3) known)
    n = np.array([3, 3, 4, 4], dtype=float)
    expected = expected_random_metrics(BASE_TEST, BASE_KNOWN, 4)
    harmonic = {3: 1 + 1 / 2 + 1 / 3, 4: 1 + 1 / 2 + 1 / 3 + 1 / 4}
    assert expected["mrr"] == pytest.approx(np.mean([harmonic[int(k)] / k for k in n]))
    assert expected["hits@1"] == pytest.approx(np.mean(1 / n))
    assert expected["hits@3"] == pytest.approx(np.mean(np.minimum(3, n) / n))
    assert expected["mean_rank"] == pytest.approx(np.mean((n + 1) / 2))
    # a scorer with every score equal, under the mean tie rule, gets exactly the expected rank
    const = rank_triples(lambda rows, side: np.zeros((len(rows), 4)), BASE_TEST, BASE_KNOWN, 4)
    np.testing.assert_array_equal(const["head"], [2, 2])
    np.testing.assert_array_equal(const["tail"], [2.5, 2.5])
    # sampled ranks: uniform on {1, …, n}, reproducible from the seed
    many = np.repeat(BASE_TEST, 2000, axis=0)
    sampled = random_ranks(many, BASE_KNOWN, 4, seed=3)
    assert sampled["head"].min() == 1 and sampled["head"].max() == 3 and sampled["tail"].max() == 4
    assert abs(link_metrics(sampled)["mrr"] - expected["mrr"]) < 0.02
    np.testing.assert_array_equal(random_ranks(many, BASE_KNOWN, 4, seed=3)["tail"], sampled["tail"])


# ---- the corrupted-triple sampler -------------------------------------------------------------------

def dense_graph(n=6):
    """Half of all (h, 0, t), so that an unfiltered corruption is often a true triple."""
    return np.array([(h, 0, t) for h in range(n) for t in range(n) if (h + t) % 2 == 0], dtype=np.int64)


@pytest.mark.parametrize("bernoulli", [False, True])
def test_corruptions_change_exactly_one_of_head_and_tail(bernoulli):
    triples, n, _ = hypercube(3)
    batches = CorruptedTripleBatches(triples, n, 64, seed=1, bernoulli=bernoulli)
    for _ in range(10):
        b = batches()
        pos, neg = b["positive"], b["negative"]
        assert pos.shape == neg.shape == (64, 3) and pos.dtype == neg.dtype == np.int64
        changed = pos != neg
        assert (changed.sum(axis=1) == 1).all() and not changed[:, 1].any()
        assert ((neg >= 0) & (neg < n)).all()
        assert set(map(tuple, pos)) <= set(map(tuple, triples))


def test_filtered_negatives_are_never_known():
    triples = dense_graph()
    known = set(map(tuple, triples))
    unfiltered = CorruptedTripleBatches(triples, 6, 64, seed=0)
    assert any(tuple(t) in known for _ in range(5) for t in unfiltered()["negative"])   # the test can fail
    filtered = CorruptedTripleBatches(triples, 6, 64, seed=0, known=triples)
    for _ in range(20):
        b = filtered()
        assert not any(tuple(t) in known for t in b["negative"])
        assert ((b["positive"] != b["negative"]).sum(axis=1) == 1).all()


def test_no_possible_corruption_is_an_error():
    everything = np.array([(h, 0, t) for h in range(2) for t in range(2)])
    with pytest.raises(RuntimeError, match=r"all gave known triples"):
        CorruptedTripleBatches(everything, 2, 4, known=everything, max_tries=10)()


def test_bernoulli_corrupts_the_one_side_of_a_one_to_many_relation():
    one_to_many = [(0, 0, t) for t in range(1, 9)]           # tph 8, hpt 1: P(head) = 8/9
    many_to_one = [(h, 1, 0) for h in range(1, 9)]           # tph 1, hpt 8: P(head) = 1/9
    triples = np.array(one_to_many + many_to_one)
    np.testing.assert_allclose(_bernoulli_head_probability(triples, 3), [8 / 9, 1 / 9, 0.5])
    b = CorruptedTripleBatches(triples, 9, 4000, seed=0, bernoulli=True)()
    head_changed = b["positive"][:, 0] != b["negative"][:, 0]
    r = b["positive"][:, 1]
    assert abs(head_changed[r == 0].mean() - 8 / 9) < 0.03 and abs(head_changed[r == 1].mean() - 1 / 9) < 0.03


def test_exact_resume():
    triples = dense_graph()
    make = lambda: CorruptedTripleBatches(triples, 6, 16, seed=7, known=triples, bernoulli=True)   # noqa: E731
    a = make()
    for _ in range(3):
        a()
    state = json.loads(json.dumps(a.state_dict()))           # as a checkpoint's meta.json stores it
    after = [a() for _ in range(4)]
    b = make()
    b()                                                      # wherever it was, the state decides
    b.load_state_dict(state)
    for x, y in zip(after, [b() for _ in range(4)]):
        np.testing.assert_array_equal(x["positive"], y["positive"])
        np.testing.assert_array_equal(x["negative"], y["negative"])
    assert b.batches_drawn == a.batches_drawn == 7
    other = CorruptedTripleBatches(triples, 6, 8, seed=7, known=triples, bernoulli=True)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="triples_crc32"):
        CorruptedTripleBatches(triples[:-1], 6, 16, seed=7, known=triples, bernoulli=True).load_state_dict(state)


def test_trainer_resumes_transe_exactly(tmp_path):
    triples, n, R = hypercube(3)
    config = TrainConfig(max_steps=8, batch_size=8, learning_rate=0.05, warmup_steps=2, eval_interval=0, seed=0)

    def trainer(out_dir):
        model = TransE(TransEConfig(n, R, dim=4, entity_norm="renorm"), generator=Generator(0))
        batches = CorruptedTripleBatches(triples, n, 8, seed=0, known=triples)
        return Trainer(model, config, batches, loss_fn=transe_loss, out_dir=out_dir, quiet=True)

    whole = trainer(tmp_path / "a").fit()["loss"]
    trainer(tmp_path / "b").fit(stop_at=4)
    resumed = trainer(tmp_path / "b").resume().fit()["loss"]
    assert resumed == whole


# ---- errors -------------------------------------------------------------------------------------

def test_errors_name_the_id_or_the_shape():
    model = TransE(TransEConfig(6, 3, dim=4))
    with pytest.raises(ValueError, match=r"tail entity id 7, outside \[0, 6\)"):
        model(np.array([[0, 0, 7]]), np.array([[0, 0, 1]]))
    with pytest.raises(ValueError, match=r"relation id 3, outside \[0, 3\)"):
        model(np.array([[0, 3, 1]]))
    with pytest.raises(ValueError, match=r"shape \(N, 3\).*\(4, 2\)"):
        model(np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"negative of shape \(1, 3\) does not match positive \(2, 3\)"):
        model(POS[:2], NEG[:1])
    with pytest.raises(ValueError, match=r"integer ids.*float64"):
        model(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"head entity id 6"):
        CorruptedTripleBatches(np.array([[1, 0, 2], [6, 0, 1]]), 6, 4)
    with pytest.raises(ValueError, match=r"test must have shape \(N, 3\).*\(3,\)"):
        rank_triples(model, np.array([0, 0, 1]), POS, 6)
    with pytest.raises(ValueError, match=r"known row 0 \(0, 0, 9\) has tail entity id 9"):
        rank_triples(model, POS, np.array([[0, 0, 9]]), 6)
    with pytest.raises(ValueError, match=r"returned shape \(2, 5\)"):
        rank_triples(lambda rows, side: np.zeros((len(rows), 5)), POS[:2], POS, 6)
    with pytest.raises(ValueError, match="p_norm must be 1 or 2"):
        TransEConfig(6, 3, p_norm=3)
    with pytest.raises(ValueError, match="entity_norm"):
        TransEConfig(6, 3, entity_norm="sphere")
