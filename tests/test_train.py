"""The one training loop (minilm.train): pretraining through ``lm_trainer`` (§3.1 step 3), resuming,
checkpoints, early stopping, the loss curve, custom losses, classifiers through the same Trainer,
generation and the CLI (whose training flags are TrainConfig's fields)."""
import dataclasses
import io
import json
import math

import numpy as np
import pytest

import minilm
from helpers import tiny_gpt
from minilm.checkpoint import load_checkpoint
from minilm.cli import main
from minilm.finetune import ExampleBatches, accuracy
from minilm.generate import filter_logits, generate
from minilm.models import GPTClassifier
from minilm.optim import AdamW
from minilm.pretrain import load_from_checkpoint
from minilm.train import TrainConfig, Trainer, finetune_config, lm_trainer, to_tensors

SMALL = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def corpus_ids(n=600, seed=0):
    """A learnable sequence: a repeating pattern with a little noise."""
    rng = np.random.default_rng(seed)
    ids = np.tile(np.arange(11), n // 11 + 1)[:n]
    flip = rng.random(n) < 0.05
    ids[flip] = rng.integers(0, 11, flip.sum())
    return ids


def small_config(**train):
    return TrainConfig(**{"max_steps": 8, "batch_size": 4, "eval_interval": 4, "eval_iters": 2,
                          "warmup_steps": 2, "log_interval": 100, **train})


def make_trainer(out_dir, dropout=0.0, **train):
    minilm.manual_seed(0)
    model = tiny_gpt(**SMALL, dropout=dropout)
    ids = corpus_ids()
    return lm_trainer(model, ids[:500], ids[500:], small_config(**train), out_dir, stream=io.StringIO())


def test_a_tiny_gpt_overfits_one_batch():
    model = tiny_gpt(**SMALL)
    rng = np.random.default_rng(0)
    x, y = minilm.tensor(rng.integers(0, 11, (4, 8))), minilm.tensor(rng.integers(0, 11, (4, 8)))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model(x, labels=y).loss
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05


def test_training_lowers_val_loss_and_writes_checkpoints_and_curve(tmp_path):
    t = make_trainer(tmp_path, max_steps=40, eval_interval=20, learning_rate=1e-2)
    result = t.fit()
    (s1, _, v1), (s2, _, v2) = result["history"]["eval"]
    assert (s1, s2) == (20, 40) and v2 < v1 and result["best_val"] == v2
    assert len(result["loss"]) == 40 and result["step"] == 40 and not result["stopped_early"]
    assert (tmp_path / "best" / "model.safetensors").exists() and (tmp_path / "last" / "meta.json").exists()
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert not t.model.training                                        # fit() leaves eval mode
    saved = load_checkpoint(tmp_path / "last").extra["train"]["train_config"]
    assert saved == t.config.to_dict() and TrainConfig.from_dict(saved) == t.config


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_continues_with_the_same_losses(tmp_path, dropout):
    whole = make_trainer(tmp_path / "a", dropout=dropout).fit()["history"]["loss"]
    make_trainer(tmp_path / "b", dropout=dropout).fit(stop_at=5)      # interrupted after step 5
    resumed = make_trainer(tmp_path / "b", dropout=dropout).resume("last")
    assert resumed.step == 5
    after = resumed.fit()["history"]["loss"]
    assert after == whole                                              # bit for bit


def test_early_stopping_with_patience(tmp_path):
    t = make_trainer(tmp_path, max_steps=40, eval_interval=4, patience=2, learning_rate=1e-9, min_lr_ratio=1.0,
                     warmup_steps=0)
    result = t.fit()
    assert result["stopped_early"] and result["step"] < 40


def test_save_load_gives_identical_logits(tmp_path):
    t = make_trainer(tmp_path, max_steps=4)
    t.fit()
    model, _, ckpt = load_from_checkpoint(tmp_path / "last")
    x = minilm.tensor(corpus_ids(16).reshape(2, 8))
    np.testing.assert_array_equal(model(x).logits.numpy(), t.model(x).logits.numpy())
    assert ckpt.step == 4


def test_a_non_finite_loss_stops_with_an_error_naming_the_step():
    model = tiny_gpt(**SMALL)
    batches = lambda: (np.zeros((2, 8), np.int64), np.ones((2, 8), np.int64))   # noqa: E731
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss = m(**batch).loss
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(FloatingPointError, match="loss became nan at step 2; lower the learning rate"):
        Trainer(model, small_config(), batches, loss_fn=loss_fn, quiet=True).fit()


def test_a_loss_fn_returning_parts_records_them_in_history():
    model = tiny_gpt(**SMALL)
    ids = corpus_ids()
    batches = lambda: {"input_ids": ids[None, :8], "labels": ids[None, 1:9]}    # noqa: E731

    def loss_fn(m, batch):
        assert set(batch) == {"input_ids", "labels"} and isinstance(batch["input_ids"], minilm.Tensor)
        nll = m(**batch).loss
        penalty = 1e-3 * (m.transformer.wte.weight ** 2).sum()
        return nll + penalty, {"nll": nll.item(), "penalty": penalty.item()}

    t = Trainer(model, small_config(max_steps=5, eval_interval=0), batches, loss_fn=loss_fn, quiet=True)
    result = t.fit()
    h = result["history"]
    assert len(h["nll"]) == len(h["penalty"]) == 5 == len(result["loss"])
    np.testing.assert_allclose(np.add(h["nll"], h["penalty"]), result["loss"], rtol=1e-5)
    assert h["eval"] == [] and result["best_val"] == math.inf           # no evaluator: no evaluation


def test_a_classifier_trains_through_the_trainer_and_writes_nothing_without_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 11, size=(64, 6))
    y = (X[:, -1] > 5).astype(np.int64)                                # the last token decides the class
    mask = np.ones_like(X)
    mask[::3, :2] = 0                                                  # some rows left-padded
    clf = GPTClassifier(tiny_gpt(**SMALL), n_classes=2, pooling="last", generator=minilm.Generator(1))
    evaluations = []

    def evaluate(model):
        assert not model.training and not minilm.is_grad_enabled()
        evaluations.append(accuracy(model, X, y, attention_mask=mask))
        return {"val": 1.0 - evaluations[-1]}

    batches = ExampleBatches({"input_ids": X, "attention_mask": mask, "labels": y}, batch_size=16, seed=0)
    config = finetune_config(max_steps=60, batch_size=16, learning_rate=1e-2, eval_interval=20)
    stream = io.StringIO()
    result = Trainer(clf, config, batches, evaluate=evaluate, stream=stream).fit()
    assert len(evaluations) == 3 and [s for s, _, _ in result["history"]["eval"]] == [20, 40, 60]
    assert result["best_val"] == min(1.0 - a for a in evaluations) and evaluations[-1] > 0.8
    assert np.mean(result["loss"][-10:]) < np.mean(result["loss"][:10])
    assert "step 20: val" in stream.getvalue() and "saved" not in stream.getvalue()
    assert list(tmp_path.iterdir()) == []                              # out_dir=None: no file anywhere


def test_example_batches_resume_exactly(tmp_path):
    X = np.random.default_rng(0).integers(0, 11, size=(40, 6))
    y = (X[:, 0] > 5).astype(np.int64)

    def trainer(out_dir):
        clf = GPTClassifier(tiny_gpt(**SMALL), n_classes=2, generator=minilm.Generator(1))
        batches = ExampleBatches({"input_ids": X, "labels": y}, batch_size=8, seed=3)
        config = finetune_config(max_steps=8, batch_size=8, eval_interval=4)
        return Trainer(clf, config, batches, evaluate=lambda m: {"val": 0.0}, out_dir=out_dir, quiet=True)

    whole = trainer(tmp_path / "a").fit()["loss"]
    trainer(tmp_path / "b").fit(stop_at=5)
    assert trainer(tmp_path / "b").resume("last").fit()["loss"] == whole


def test_config_checks_defaults_and_batches():
    with pytest.raises(ValueError, match="max_steps must be positive, got 0"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="min_lr_ratio in"):
        TrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="patience must be non-negative"):
        TrainConfig(patience=-1)
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "unknown": 1}) == TrainConfig()
    ft = finetune_config(seed=4)
    assert (ft.max_steps, ft.batch_size, ft.learning_rate, ft.warmup_steps, ft.min_lr_ratio, ft.weight_decay,
            ft.beta2, ft.eval_interval, ft.log_interval, ft.seed) == (400, 16, 1e-3, 20, 0.1, 0.0, 0.999, 0, 50, 4)
    b = to_tensors((np.zeros((2, 3), np.int64), np.ones((2, 3), np.int64)), "cpu")
    assert set(b) == {"input_ids", "labels"} and isinstance(b["labels"], minilm.Tensor)
    with pytest.raises(TypeError, match="a batch must be a dict of model arguments"):
        to_tensors([1, 2, 3], "cpu")
    model = tiny_gpt(**SMALL)
    t = Trainer(model, small_config(), lambda: {"input_ids": np.zeros((2, 8), np.int64)}, quiet=True)
    with pytest.raises(ValueError, match="GPT returned no loss; the batch needs labels"):
        t.fit()
    with pytest.raises(ValueError, match="GPT has no trainable parameters"):
        Trainer(model.freeze(), small_config(), None)


def test_filter_logits():
    z = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(filter_logits(z), [[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(filter_logits(z, top_k=2), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(filter_logits(z, top_p=0.7), [[0.625, 0.375, 0, 0]])   # 0.5 < 0.7, then 0.8 ≥ 0.7
    np.testing.assert_allclose(filter_logits(z, top_p=0.1), [[1, 0, 0, 0]])
    sharp = filter_logits(z, temperature=0.5)
    assert sharp[0, 0] > 0.5
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(z, temperature=0)


def test_generation_is_seeded_and_greedy_is_top_k_1():
    model = tiny_gpt(**SMALL)
    prompt = [[1, 2, 3]]
    a = generate(model, prompt, 12, generator=minilm.Generator(5)).numpy()
    b = generate(model, prompt, 12, generator=minilm.Generator(5)).numpy()
    c = generate(model, prompt, 12, generator=minilm.Generator(6)).numpy()
    assert a.shape == (1, 15) and (a == b).all() and not (a == c).all()
    greedy = generate(model, prompt, 12, greedy=True).numpy()
    np.testing.assert_array_equal(greedy, generate(model, prompt, 12, top_k=1, generator=minilm.Generator(1)).numpy())
    assert model.training                                   # generate() restores the mode


TINY_RUN = ["--eval-iters", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--batch-size", "4"]


def test_cli_pretrain_generate_info(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(text), "--out", str(out), "--max-steps", "6", "--eval-interval", "3",
                 *TINY_RUN, "--sample-tokens", "20"]) == 0
    printed = capsys.readouterr().out
    assert "best val loss" in printed and "a sample from the best checkpoint" in printed
    assert json.loads((out / "result.json").read_text())["step"] == 6
    assert main(["generate", "--checkpoint", str(out / "best"), "--prompt", "to be", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("to be")
    assert main(["info", str(out / "best")]) == 0
    assert "GPT, step 6" in capsys.readouterr().out
    assert main(["pretrain", "--corpus", str(text), "--out", str(out), "--max-steps", "8", "--eval-interval", "3",
                 *TINY_RUN, "--sample-tokens", "0", "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_cli_training_flags_are_the_train_config_fields(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert usage.count(flag + " ") == 2, flag                 # once in the usage line, once in its description
    for gone in ("--max-iters", "--min-lr ", "--warmup-iters", "--lr "):
        assert gone not in usage
    assert f"(default: {TrainConfig().max_steps})" in usage       # the defaults are the dataclass's


def test_cli_training_flags_reach_the_trainer(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(text), "--out", str(out), "--max-steps", "3", "--learning-rate",
                 "3e-3", "--min-lr-ratio", "0.5", "--warmup-steps", "1", "--weight-decay", "0", "--eval-interval",
                 "0", "--seed", "7", *TINY_RUN, "--sample-tokens", "0"]) == 0
    assert "training: 3 steps of 4 x 16 tokens, lr 0.003 -> 0.0015" in capsys.readouterr().out
    saved = load_checkpoint(out / "last").extra["train"]["train_config"]
    assert {k: saved[k] for k in ("max_steps", "learning_rate", "min_lr_ratio", "warmup_steps", "weight_decay",
                                  "eval_interval", "seed", "batch_size", "eval_iters")} == dict(
        max_steps=3, learning_rate=3e-3, min_lr_ratio=0.5, warmup_steps=1, weight_decay=0.0, eval_interval=0,
        seed=7, batch_size=4, eval_iters=1)
    assert json.loads((out / "result.json").read_text())["step"] == 3
    with pytest.raises(SystemExit):
        main(["pretrain", "--max-iters", "3"])                     # the old name is gone
    assert "unrecognized arguments: --max-iters" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["pretrain", "generate", "info", "corpus", "demo"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage: minilm" in capsys.readouterr().out


def test_loss_by_position_averages_to_the_model_loss_and_restarts_each_piece():
    """Its mean is the model's own G4 loss on the same tokens; read in pieces of T, position
    t of the block gives what position t mod T gives when the piece is read on its own."""
    from minilm.train import loss_by_position
    gpt = tiny_gpt(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8, dtype=np.float64).eval()
    blocks = np.random.default_rng(0).integers(0, 11, (3, 17))                   # (N, L + 1)
    whole = loss_by_position(gpt, blocks)
    with minilm.no_grad():
        loss = gpt(minilm.tensor(blocks[:, :-1]), labels=minilm.tensor(blocks[:, 1:])).loss.item()
    assert whole.shape == (16,) and abs(whole.mean() - loss) < 1e-12
    pieces = loss_by_position(gpt, blocks, read_length=4)
    second = loss_by_position(gpt, blocks[:, 4:9])                               # the second piece alone
    np.testing.assert_allclose(pieces[4:8], second, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="must divide"):
        loss_by_position(gpt, blocks, read_length=5)
    with pytest.raises(ValueError, match="integer token ids"):
        loss_by_position(gpt, blocks.astype(float))
