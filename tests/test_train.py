"""Pretraining (§3.1 step 3): the loop, resuming, checkpoints, generation and the CLI."""
import json

import numpy as np
import pytest

import minilm
from minilm.cli import main
from minilm.generate import filter_logits, generate
from minilm.models import GPT, GPTConfig
from minilm.optim import AdamW
from minilm.pretrain import load_from_checkpoint
from minilm.train import TrainConfig, Trainer

SMALL = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def corpus_ids(n=600, seed=0):
    """A learnable sequence: a repeating pattern with a little noise."""
    rng = np.random.default_rng(seed)
    ids = np.tile(np.arange(11), n // 11 + 1)[:n]
    flip = rng.random(n) < 0.05
    ids[flip] = rng.integers(0, 11, flip.sum())
    return ids


def make_trainer(tmp_path, dropout=0.0, **train):
    minilm.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, dropout=dropout), generator=minilm.Generator(0))
    cfg = TrainConfig(**{"max_iters": 8, "batch_size": 4, "eval_interval": 4, "eval_iters": 2,
                         "warmup_iters": 2, "log_interval": 100, **train})
    ids = corpus_ids()
    import io
    return Trainer(model, ids[:500], ids[500:], cfg, tmp_path, model_config=model.config.to_dict(),
                   stream=io.StringIO())


def test_a_tiny_gpt_overfits_one_batch():
    model = GPT(GPTConfig(**SMALL), generator=minilm.Generator(0))
    rng = np.random.default_rng(0)
    x, y = minilm.tensor(rng.integers(0, 11, (4, 8))), minilm.tensor(rng.integers(0, 11, (4, 8)))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05


def test_training_lowers_val_loss_and_writes_checkpoints_and_curve(tmp_path):
    t = make_trainer(tmp_path, max_iters=40, eval_interval=20, learning_rate=1e-2)
    result = t.fit()
    (s1, _, v1), (s2, _, v2) = result["history"]["eval"]
    assert (s1, s2) == (20, 40) and v2 < v1
    assert (tmp_path / "best" / "model.safetensors").exists() and (tmp_path / "last" / "meta.json").exists()
    assert (tmp_path / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_continues_with_the_same_losses(tmp_path, dropout):
    whole = make_trainer(tmp_path / "a", dropout=dropout).fit()["history"]["loss"]
    make_trainer(tmp_path / "b", dropout=dropout).fit(stop_at=5)      # interrupted after step 5
    resumed = make_trainer(tmp_path / "b", dropout=dropout).resume("last")
    assert resumed.step == 5
    after = resumed.fit()["history"]["loss"]
    assert after == whole                                              # bit for bit


def test_early_stopping_with_patience(tmp_path):
    t = make_trainer(tmp_path, max_iters=40, eval_interval=4, patience=2, learning_rate=1e-9, min_lr=1e-9,
                     warmup_iters=0)
    result = t.fit()
    assert result["stopped_early"] and result["step"] < 40


def test_save_load_gives_identical_logits(tmp_path):
    t = make_trainer(tmp_path, max_iters=4)
    t.fit()
    model, _, ckpt = load_from_checkpoint(tmp_path / "last")
    x = minilm.tensor(corpus_ids(16).reshape(2, 8))
    np.testing.assert_array_equal(model(x)[0].numpy(), t.model(x)[0].numpy())
    assert ckpt.step == 4


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
    model = GPT(GPTConfig(**SMALL), generator=minilm.Generator(0))
    prompt = [[1, 2, 3]]
    a = generate(model, prompt, 12, generator=minilm.Generator(5)).numpy()
    b = generate(model, prompt, 12, generator=minilm.Generator(5)).numpy()
    c = generate(model, prompt, 12, generator=minilm.Generator(6)).numpy()
    assert a.shape == (1, 15) and (a == b).all() and not (a == c).all()
    greedy = generate(model, prompt, 12, greedy=True).numpy()
    np.testing.assert_array_equal(greedy, generate(model, prompt, 12, top_k=1, generator=minilm.Generator(1)).numpy())
    assert model.training                                   # generate() restores the mode


def test_cli_pretrain_generate_info(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    main(["pretrain", "--corpus", str(text), "--out", str(out), "--max-iters", "6", "--eval-interval", "3",
          "--eval-iters", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
          "--batch-size", "4", "--sample-tokens", "20"])
    printed = capsys.readouterr().out
    assert "best val loss" in printed and "a sample from the best checkpoint" in printed
    assert json.loads((out / "result.json").read_text())["step"] == 6
    main(["generate", "--checkpoint", str(out / "best"), "--prompt", "to be", "--max-new-tokens", "10"])
    assert capsys.readouterr().out.startswith("to be")
    main(["info", str(out / "best")])
    assert "GPT, step 6" in capsys.readouterr().out
    main(["pretrain", "--corpus", str(text), "--out", str(out), "--max-iters", "8", "--eval-interval", "3",
          "--eval-iters", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
          "--batch-size", "4", "--sample-tokens", "0", "--resume"])
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["pretrain", "generate", "info", "demo"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage: minilm" in capsys.readouterr().out
