"""Bad input, tried as a hostile new user would (issue 13): nothing lost, nothing silent.

Each test names the case it reproduces; every one of them failed before the fix:
a fresh run replacing an old one, sampling from NaN, a resumed run ignoring a new
learning rate, parseable-but-wrong JSON failing deep inside or half-restoring state,
CLI tracebacks and ZeroDivisionErrors, adding LoRA twice, --help hiding defaults, an
absurd first ETA.  Checkpoint corruption and crash-safety are in
test_checkpoint_integrity.py, float16 and dtype promotion in test_float16.py.
"""
import io
import json

import numpy as np
import pytest

import minilm
from helpers import tiny_gpt
from minilm import peft
from minilm.checkpoint import CheckpointError, load_checkpoint
from minilm.cli import main
from minilm.configs import ConfigError
from minilm.generate import generate
from minilm.models import GPTConfig
from minilm.pretrain import load_from_checkpoint
from minilm.train import CheckpointExistsError, Progress, TrainConfig, lm_trainer

SMALL = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
TINY_RUN = ["--eval-iters", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--batch-size", "4", "--sample-tokens", "0", "--log-interval", "100"]


def ids(n=600):
    return np.tile(np.arange(11), n // 11 + 1)[:n]


def trainer(out_dir, overwrite=False, **train):
    minilm.manual_seed(0)
    config = TrainConfig(**{"max_steps": 6, "batch_size": 4, "eval_interval": 3, "eval_iters": 1,
                            "warmup_steps": 1, "log_interval": 100, **train})
    data = ids()
    return lm_trainer(tiny_gpt(**SMALL), data[:500], data[500:], config, out_dir, stream=io.StringIO(),
                      overwrite=overwrite)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    return path


def edit_meta(ckpt_dir, change):
    """Edit a checkpoint's meta.json (parseable, but wrong) and re-seal its checksum, as a buggy
    writer would: the loader's validation, not its checksum, must catch what is wrong."""
    from minilm.checkpoint import _seal
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    change(meta)
    (ckpt_dir / "meta.json").write_text(_seal(meta), encoding="utf-8")


# ---- 1. a fresh run never replaces a previous run ------------------------------------------

def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    trainer(tmp_path).fit()
    best = load_checkpoint(tmp_path / "best")
    with pytest.raises(CheckpointExistsError, match=r"already holds a run .*resume.*overwrite=True"):
        trainer(tmp_path, max_steps=2).fit()
    again = load_checkpoint(tmp_path / "best")
    assert again.step == best.step and all(np.array_equal(again.state[k], v) for k, v in best.state.items())


def test_overwrite_starts_over_and_leaves_no_stale_best(tmp_path):
    trainer(tmp_path, max_steps=6).fit()
    trainer(tmp_path, overwrite=True, max_steps=2, eval_interval=0).fit()
    assert load_checkpoint(tmp_path / "best").step == 2 and load_checkpoint(tmp_path / "last").step == 2


def test_the_cli_refuses_too_and_says_which_flag(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "4", "--eval-interval",
                 "2", *TINY_RUN]) == 0
    step = load_checkpoint(out / "best").step
    capsys.readouterr()
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minilm: error: ") and "--resume" in err and "--overwrite" in err
    assert load_checkpoint(out / "best").step == step
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_RUN,
                 "--overwrite"]) == 0
    assert load_checkpoint(out / "best").step == 2


# ---- 4. sampling never degenerates silently --------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_k=0), "top_k must be an integer ≥ 1"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer ≥ 0"),
])
def test_bad_sampling_settings_are_refused(kwargs, match):
    model = tiny_gpt(**SMALL)
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(model, [[1, 2]], **kwargs)


def test_float_and_out_of_range_prompt_ids_are_refused():
    model = tiny_gpt(**SMALL)
    with pytest.raises(TypeError, match="prompt ids must be integers, got dtype float64"):
        generate(model, np.array([[1.0, 2.0]]), 2)
    with pytest.raises(ValueError, match=r"prompt ids \[11\] are outside the vocabulary \[0, 11\)"):
        generate(model, [[1, 11]], 2)


@pytest.mark.parametrize("greedy", [False, True])
def test_nan_logits_stop_generation_with_the_step(greedy):
    model = tiny_gpt(**SMALL)
    model.transformer.wte.weight.data[3] = np.nan          # tied output row: token 3's logit becomes NaN
    with pytest.raises(FloatingPointError, match=r"logits are not finite at step 0 of 5"):
        generate(model, [[1, 2]], 5, greedy=greedy)


def test_the_cli_exits_non_zero_on_nan_temperature(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_RUN]) == 0
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(out / "best"), "--temperature", "nan"]) == 2
    assert capsys.readouterr().err.strip().startswith("minilm: error: temperature must be a finite number")


# ---- 5. a resumed run follows the settings it is given -----------------------------------------

def test_resume_with_a_new_learning_rate_trains_at_it_and_says_so(tmp_path):
    first = trainer(tmp_path, max_steps=6)
    first.fit(stop_at=4)
    again = trainer(tmp_path, max_steps=12, learning_rate=0.5, min_lr_ratio=0.1)
    again.resume()
    assert again.changed == {"max_steps": (6, 12), "learning_rate": (0.001, 0.5)}
    assert "learning_rate 0.001 → 0.5" in again.stream.getvalue()
    fresh = trainer(tmp_path / "fresh", max_steps=12, learning_rate=0.5, min_lr_ratio=0.1)
    for _ in range(4):
        fresh.scheduler.step()
    lr = again.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(fresh.optimizer.param_groups[0]["lr"]) and lr > 0.1   # the new schedule at step 4
    again.fit()
    assert again.step == 12


def test_resume_with_unchanged_settings_reports_nothing(tmp_path):
    trainer(tmp_path).fit(stop_at=4)
    again = trainer(tmp_path).resume()
    assert again.changed == {} and again.stream.getvalue() == ""


def test_resume_after_a_finished_run_says_it_is_complete(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", *TINY_RUN]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "is complete: step 2 of max_steps 2" in printed and "--max-steps" in printed
    assert "done in" not in printed


# ---- 7. parseable but wrong JSON is named, and resume changes nothing until all is checked ----

@pytest.mark.parametrize("change, match", [
    (lambda m: m["config"].update(n_embd="32"), r"GPTConfig.n_embd must be an integer, got '32'"),
    (lambda m: m["config"].update(n_layer=2.0), r"GPTConfig.n_layer must be an integer, got 2.0"),
    (lambda m: m["config"].update(n_head=-2), r"n_head must be positive"),
    (lambda m: m.pop("config"), r"a GPTConfig must be a JSON object, got NoneType"),
    (lambda m: m.update(config=[1, 2]), r"a GPTConfig must be a JSON object, got list"),
])
def test_a_wrong_config_in_meta_json_is_named_with_its_file(tmp_path, change, match):
    trainer(tmp_path, max_steps=3).fit()
    edit_meta(tmp_path / "best", change)
    with pytest.raises(CheckpointError, match=match) as e:
        load_from_checkpoint(tmp_path / "best")
    assert str(tmp_path / "best" / "meta.json") in str(e.value)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(extra=None), "holds no training state"),
    (lambda m: m["extra"]["train"].pop("history"), "extra.train.history is NoneType"),
    (lambda m: m["extra"]["train"].update(step="4"), "extra.train.step is str"),
    (lambda m: m["extra"]["train"]["history"].update(loss=None), "extra.train.history.loss is missing"),
    (lambda m: m["extra"]["train"]["scheduler"].pop("last_step"), "scheduler.last_step is missing"),
    (lambda m: m["extra"]["train"]["train_config"].update(learning_rate="fast"),
     "TrainConfig.learning_rate must be a number, got 'fast'"),
    (lambda m: m["extra"]["train"].update(batches={"bit_generator": "broken"}), "does not fit this run's batch"),
    (lambda m: m["rng"].pop("minilm.default_generator"), "rng.minilm.default_generator is missing"),
])
def test_resume_validates_everything_before_it_changes_anything(tmp_path, change, match):
    trainer(tmp_path).fit(stop_at=4)
    edit_meta(tmp_path / "last", change)
    t = trainer(tmp_path)
    weights = {k: v.copy() for k, v in t.model.state_dict().items()}
    lr, sampler = t.optimizer.param_groups[0]["lr"], json.dumps(t.batches.state_dict(), default=str)
    with pytest.raises(CheckpointError, match=match):
        t.resume()
    assert all(np.array_equal(v, weights[k]) for k, v in t.model.state_dict().items())
    assert t.step == 0 and t.optimizer.param_groups[0]["lr"] == lr and not t.optimizer.state
    assert json.dumps(t.batches.state_dict(), default=str) == sampler


def test_an_adapter_config_of_the_wrong_type_names_field_and_file(tmp_path):
    model = tiny_gpt(**SMALL)
    peft.add(model, peft.AdapterConfig(r=4))
    folder = peft.save_adapter(model, tmp_path / "adapter")
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["methods"][0]["r"] = "8"
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"adapter_config.json: AdapterConfig.r must be an integer or null, "
                                          r"got '8'"):
        peft.load_adapter(tiny_gpt(**SMALL), folder)


@pytest.mark.parametrize("config, match", [
    (lambda: GPTConfig(n_layer=True), "n_layer must be an integer, got True"),
    (lambda: TrainConfig(batch_size=4.0), "batch_size must be an integer, got 4.0"),
    (lambda: peft.LoRAConfig(r=0), "r must be ≥ 1"),
    (lambda: peft.PrefixConfig(m="10"), "PrefixConfig.m must be an integer"),
])
def test_configs_check_their_field_types_when_built(config, match):
    with pytest.raises(ValueError, match=match):
        config()


# ---- 8. the CLI: one line, status 2; no ZeroDivisionError; LoRA twice ------------------------

@pytest.mark.parametrize("args, match", [
    (["generate", "--checkpoint", "no/such/folder"], "no checkpoint at no/such/folder"),
    (["info", "no/such/folder"], "no checkpoint at no/such/folder"),
    (["pretrain", "--learning-rate", "0", "--max-steps", "1"], "learning_rate must be > 0"),
    (["pretrain", "--max-steps", "0"], "max_steps must be positive, got 0"),
    (["pretrain", "--eval-interval", "-1"], "eval_interval must be non-negative"),
    (["demo", "--device", "tpu"], "tpu"),
])
def test_cli_errors_are_one_line_and_exit_2(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("minilm: error: ") and match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(monkeypatch):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", "no/such/folder"])
    with pytest.raises(FileNotFoundError):
        main(["info", "no/such/folder", "--debug"])
    monkeypatch.setenv("MINILM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["info", "no/such/folder"])


def test_eval_interval_zero_evaluates_once_at_the_end(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--max-steps", "3", "--eval-interval",
                 "0", *TINY_RUN]) == 0
    assert load_checkpoint(out / "best").step == 3


def test_adding_lora_twice_says_so():
    model = tiny_gpt(**SMALL)
    peft.add(model, peft.LoRAConfig(r=2))
    with pytest.raises(ValueError, match=r"already has LoRA on \['transformer.h.0.attn.c_attn'\]"):
        peft.add(model, peft.LoRAConfig(r=2))


# ---- 9. new-user friction ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["pretrain", "generate", "demo"])
def test_help_shows_every_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    parser_defaults = {"pretrain": ["(default: 2048)", "(default: char)", "(default: 0.0)", "(default: 64)",
                                    "(default: 300)", "(default: cpu)"],
                       "generate": ["(default: 0.8)", "(default: 300)", "(default: 0)"],
                       "demo": ["(default: 300)", "(default: cpu)"]}[command]
    for d in parser_defaults:
        assert d in text, d
    assert "(default 2048) (default: 2048)" not in text


def test_a_bpe_run_reports_nats_per_character_too(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--corpus", str(corpus), "--out", str(out), "--tokenizer", "bpe", "--vocab-size",
                 "270", "--max-steps", "2", *TINY_RUN]) == 0
    printed = capsys.readouterr().out
    assert "val/char" in printed and "nats/char" in printed


def test_the_eta_ignores_the_first_step(monkeypatch):
    clock = iter([100.0, 101.0, 102.0])                  # step 1 ended at 100 s (compiling); then 1 s a step
    monkeypatch.setattr("minilm.train.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    p = Progress(total=12, every=1, stream=stream)
    p.update(0, 3.0, 10, 1e-3)
    p.update(1, 3.0, 10, 1e-3)
    p.update(2, 3.0, 10, 1e-3)
    lines = stream.getvalue().splitlines()
    assert "ETA  …" in lines[0] and "ETA 0:10" in lines[1] and "ETA 0:09" in lines[2]


def test_the_cached_base_is_rebuilt_not_refused_when_its_configs_change(tmp_path):
    from minilm.finetune import pretrain_base
    from minilm.tokenizers import CharTokenizer
    text = "to be or not to be, that is the question.\n" * 40
    tok = CharTokenizer.train(text)
    mc = GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    for steps in (2, 3):                    # the second call has other configs: a rebuild, on purpose
        tc = TrainConfig(max_steps=steps, batch_size=2, eval_interval=0, eval_iters=1, log_interval=100)
        pretrain_base(text, tok, mc, tc, tmp_path, stream=io.StringIO())
        assert load_checkpoint(tmp_path / "best").step == steps
