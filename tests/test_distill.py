"""Knowledge distillation (Eq. K1): the loss, its gradient, the T² scaling, the Distiller."""
import os

import numpy as np
import pytest

import minilm
from helpers import host, tiny_bert, tiny_gpt, to_tensor, token_ids
from minilm.distill import (DistillConfig, Distiller, distillation_loss, hidden_loss,
                            logits_and_states, student_from_teacher, width_and_depth)
from minilm.finetune import distill_lm
from minilm.models import GPTClassifier
from minilm.models.bert import BertClassifier
from minilm.tensor import Generator
from minilm.train import TrainConfig

CFG = dict(vocab_size=20, block_size=8, n_head=2)
BERT = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def k1_numpy(zs, zt, y, T, lam, ignore=-100):
    """Eq. K1 written out in NumPy, row by row."""
    zs, zt = zs.reshape(-1, zs.shape[-1]), zt.reshape(-1, zt.shape[-1])
    y = None if y is None else np.asarray(y).reshape(-1)
    rows = [i for i in range(len(zs)) if y is None or y[i] != ignore]
    ce = 0.0 if y is None else -np.mean([np.log(_softmax(zs[i])[y[i]]) for i in rows])
    kl = np.mean([np.sum(_softmax(zt[i] / T) * (np.log(_softmax(zt[i] / T)) - np.log(_softmax(zs[i] / T))))
                  for i in rows])
    lam = 1.0 if y is None else lam
    return (1 - lam) * ce + lam * T * T * kl


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_loss_is_eq_k1_and_gradient_checks(T, lam, device):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(3, 4, 7)), rng.normal(size=(3, 4, 7)) * 2
    y = rng.integers(0, 7, size=(3, 4))
    y[0, 1] = y[2, 3] = -100                                     # ignored positions count in neither term
    s = to_tensor(zs, device, requires_grad=True)
    t = to_tensor(zt, device)
    loss = distillation_loss(s, t, to_tensor(y, device), T=T, lam=lam)
    np.testing.assert_allclose(float(host(loss)), k1_numpy(zs, zt, y, T, lam), rtol=1e-10)
    assert minilm.gradcheck(lambda z: distillation_loss(z, t, to_tensor(y, device), T=T, lam=lam), [s])


def test_soft_only_without_targets(device):
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    s = to_tensor(zs, device, requires_grad=True)
    loss = distillation_loss(s, to_tensor(zt, device), None, T=3.0, lam=0.2)   # λ ignored: soft term only
    np.testing.assert_allclose(float(host(loss)), k1_numpy(zs, zt, None, 3.0, 1.0), rtol=1e-10)
    assert minilm.gradcheck(lambda z: distillation_loss(z, to_tensor(zt, device), None, T=3.0), [s])


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(size=(2, 5, 9)), rng.normal(size=(2, 5, 9))
    y = rng.integers(0, 9, size=(2, 5))
    y[1, 0] = -100
    T, lam = 4.0, 0.7
    s = minilm.tensor(zs, requires_grad=True)
    loss = distillation_loss(s, zt, y, T=T, lam=lam)
    loss.backward()
    ts = torch.tensor(zs, requires_grad=True)
    tt, ty = torch.tensor(zt), torch.tensor(y)
    ce = torch.nn.functional.cross_entropy(ts.reshape(-1, 9), ty.reshape(-1), ignore_index=-100)
    keep = ty.reshape(-1) != -100
    kl = torch.nn.functional.kl_div(torch.log_softmax(ts.reshape(-1, 9) / T, -1)[keep],
                                    torch.log_softmax(tt.reshape(-1, 9) / T, -1)[keep],
                                    log_target=True, reduction="batchmean")
    ref = (1 - lam) * ce + lam * T * T * kl
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(s.grad.numpy(), ts.grad.numpy(), atol=1e-14)


def test_kl_term_vanishes_when_teacher_equals_student(device):
    z = np.random.default_rng(3).normal(size=(4, 10))
    for T in (0.5, 1.0, 4.0, 20.0):
        s = to_tensor(z, device, requires_grad=True)
        loss, parts = distillation_loss(s, to_tensor(z.copy(), device), None, T=T, return_parts=True)
        assert abs(parts["kl"]) < 1e-12 and abs(float(host(loss))) < 1e-10
        loss.backward()
        assert np.abs(host(s.grad)).max() < 1e-12                # and so does its gradient


def test_t_squared_keeps_the_soft_gradient_scale():
    """Without T² the soft gradient shrinks like 1/T² for large T; with it, its norm levels off."""
    rng = np.random.default_rng(4)
    zs, zt = rng.normal(size=(64, 20)), rng.normal(size=(64, 20))
    norms = []
    for T in (4.0, 8.0, 16.0, 32.0):
        s = minilm.tensor(zs, requires_grad=True)
        distillation_loss(s, zt, None, T=T).backward()
        norms.append(np.linalg.norm(s.grad.numpy()))
    norms = np.array(norms)
    assert np.all(np.abs(norms / norms[-1] - 1) < 0.05), norms            # T² · (1/T²): about constant
    raw = norms / np.array([4.0, 8.0, 16.0, 32.0]) ** 2                    # what KL alone would give
    np.testing.assert_allclose(raw[:-1] / raw[1:], 4.0, rtol=0.05)        # shrinks 4x per doubling of T


def test_teacher_gets_no_gradient_and_errors_name_the_problem():
    s = minilm.randn(2, 3, 5, requires_grad=True)
    t = minilm.randn(2, 3, 5, requires_grad=True)
    distillation_loss(s, t, np.zeros((2, 3), np.int64)).backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 3, 4\)"):
        distillation_loss(s, minilm.randn(2, 3, 4), None)
    with pytest.raises(IndexError, match="label 5"):
        distillation_loss(s, t, np.full((2, 3), 5))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t, None, T=0)
    with pytest.raises(ValueError, match="λ"):
        distillation_loss(s, t, None, lam=1.5)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_loss(kind, device):
    rng = np.random.default_rng(5)
    hs, ht = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 3, 8))
    s = to_tensor(hs, device, requires_grad=True)
    got = float(host(hidden_loss(s, to_tensor(ht, device), kind)))
    if kind == "mse":
        want = np.mean((hs - ht) ** 2)
    else:
        want = np.mean(1 - (hs * ht).sum(-1) / (np.linalg.norm(hs, axis=-1) * np.linalg.norm(ht, axis=-1)))
    np.testing.assert_allclose(got, want, rtol=1e-7)
    assert minilm.gradcheck(lambda h: hidden_loss(h, to_tensor(ht, device), kind), [s])
    assert abs(float(host(hidden_loss(to_tensor(hs, device), to_tensor(hs, device), kind)))) < 1e-7


def _gpt(n_layer=4, d=16, seed=0, device="cpu", dtype=None):
    return tiny_gpt(device, seed, dtype, n_layer=n_layer, n_embd=d, **CFG)


def test_student_from_teacher_layers():
    teacher = _gpt(4)
    student = student_from_teacher(teacher, [0, 2])
    assert student.config.n_layer == 2
    ts, ss = teacher.state_dict(), student.state_dict()
    np.testing.assert_array_equal(ss["transformer.h.1.attn.c_attn.weight"], ts["transformer.h.2.attn.c_attn.weight"])
    np.testing.assert_array_equal(ss["transformer.wte.weight"], ts["transformer.wte.weight"])
    # blocks [0..L-1] in order give back the teacher exactly
    x = np.random.default_rng(0).integers(0, 20, (2, 8))
    np.testing.assert_array_equal(student_from_teacher(teacher, range(4))(x).logits.numpy(), teacher(x).logits.numpy())
    with pytest.raises(ValueError, match="subset of 0..3"):
        student_from_teacher(teacher, [1, 4])
    with pytest.raises(TypeError, match="must be a minilm GPT"):
        student_from_teacher(BertClassifier(tiny_bert(**BERT), 3), [0])


@pytest.mark.parametrize("hidden_weight", [0.0, 0.5])
def test_distiller_trains_only_the_student_and_gradchecks(hidden_weight, device):
    teacher = _gpt(4, seed=0, device=device, dtype=np.float64)
    student = student_from_teacher(_gpt(4, seed=1), [1, 3]).double().to(device)
    before = {k: host(v).copy() for k, v in teacher.state_dict().items()}
    d = Distiller(teacher, student, DistillConfig(T=2.0, lam=0.5, hidden_weight=hidden_weight))
    x, y = token_ids((2, 8), 20, device, seed=0), token_ids((2, 8), 20, device, seed=1)
    loss, parts = d.loss(x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert ("hidden" in parts) == bool(hidden_weight)
    for k, v in teacher.state_dict().items():
        np.testing.assert_array_equal(host(v), before[k])
    # the whole K1 (+ hidden terms) as a function of the student's parameters, by central differences
    assert minilm.gradcheck_module(_DistillLoss(d, x, y))


class _DistillLoss(minilm.nn.Module):
    """A module whose only sub-module is the student and whose output is the Distiller's loss,
    so gradcheck_module perturbs exactly the student's parameters."""

    def __init__(self, distiller, x, y):
        super().__init__()
        self.student = distiller.student
        self._d, self._x, self._y = (distiller,), x, y

    def forward(self):
        return self._d[0].loss(self._x, self._y)[0]


def test_distiller_for_a_classifier():
    teacher = GPTClassifier(_gpt(4, seed=0), 3, generator=Generator(0))
    student = GPTClassifier(student_from_teacher(teacher.gpt, [0, 3]), 3, generator=Generator(1))
    d = Distiller(teacher, student, DistillConfig(T=4.0, lam=0.9))
    x = np.random.default_rng(0).integers(0, 20, (4, 8))
    logits, layers = logits_and_states(student, minilm.tensor(x))
    assert logits.shape == (4, 3) and len(layers) == 3                     # [H⁰, H¹, H²]
    # the states are the body's layer outputs, before ln_f: GPT.hidden_states(all_layers=True)'s list
    want, _ = student.gpt.hidden_states(minilm.tensor(x), all_layers=True)
    for got, w in zip(layers, want):
        np.testing.assert_array_equal(got.numpy(), w.numpy())
    loss, parts = d.loss(minilm.tensor(x), minilm.tensor(np.array([0, 1, 2, 0])))
    loss.backward()
    np.testing.assert_allclose(loss.item(), 0.1 * parts["ce"] + 0.9 * 16 * parts["kl"], rtol=1e-6)
    assert student.score.weight.grad is not None and teacher.score.weight.grad is None


def test_hidden_terms_need_equal_widths():
    with pytest.raises(ValueError, match="equal widths"):
        Distiller(_gpt(4, d=16), _gpt(2, d=8), DistillConfig(hidden_weight=1.0))


def test_distiller_leaves_the_teachers_flags_alone():
    """The teacher is frozen by no_grad inside loss(), not by flipping its requires_grad: a teacher
    that is fine-tuned later (a classifier head on it) must still train its whole body."""
    teacher, student = _gpt(2, seed=0), _gpt(2, seed=1)
    d = Distiller(teacher, student, DistillConfig())
    assert all(p.requires_grad for p in teacher.parameters())
    x = minilm.tensor(np.random.default_rng(0).integers(0, 20, (2, 8)))
    loss, parts = d.loss(x, x)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    d1 = Distiller(teacher, student, DistillConfig(lam=1.0))
    assert d1.loss(x, x)[1]["ce"] > 0                            # still reported when it has no weight


def test_distiller_for_bert_classifiers():
    """The same Distiller through the model interface: BERT heads, a padding mask, hidden-state terms."""
    teacher = BertClassifier(tiny_bert(seed=0, **BERT), 3, generator=Generator(0))
    student = BertClassifier(tiny_bert(seed=1, **{**BERT, "num_hidden_layers": 1}), 3, generator=Generator(1))
    assert width_and_depth(teacher) == (16, 2) and width_and_depth(student) == (16, 1)
    d = Distiller(teacher, student, DistillConfig(T=2.0, lam=0.5, hidden_weight=1.0))
    assert d.layer_map == [1]
    x = token_ids((3, 8), 20, seed=2, low=1)
    mask = minilm.tensor(np.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6]))
    loss, parts = d.loss(x, minilm.tensor(np.array([0, 1, 2])), attention_mask=mask)
    loss.backward()
    assert {"ce", "kl", "hidden"} <= set(parts)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None


def test_width_and_depth_refuses_an_unknown_body():
    class Odd(minilm.nn.Module):
        base_model = property(lambda self: self)
        config = object()
    with pytest.raises(TypeError, match="n_embd/n_layer"):
        width_and_depth(Odd())


def test_distill_lm_runs_on_the_trainer_and_records_ce_and_kl():
    teacher, student = _gpt(2, seed=0), _gpt(1, seed=1)
    ids = np.random.default_rng(0).integers(0, 20, 400)
    config = TrainConfig(max_steps=5, batch_size=4, warmup_steps=2, eval_interval=0, log_interval=5)
    history = distill_lm(Distiller(teacher, student, DistillConfig(T=2.0, lam=0.5)), ids, config,
                         stream=open(os.devnull, "w"))
    assert set(history) == {"loss", "ce", "kl"} and all(len(v) == 5 for v in history.values())
    np.testing.assert_allclose(history["loss"], [0.5 * c + 0.5 * 4 * k for c, k in zip(history["ce"], history["kl"])],
                               rtol=1e-5)
    assert not student.training                                  # the Trainer leaves it in eval mode
