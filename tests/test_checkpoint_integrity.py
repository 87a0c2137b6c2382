"""Checkpoint integrity (issue 13): every byte is verified before it is parsed, a save killed at any
stage leaves a checkpoint that loads (the old or the new one) and leftovers that the next save or
load clears away, and load_state_dict refuses an array of another dtype unless told to cast."""
import hashlib
import itertools
import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minilm
import minilm.checkpoint as ckpt
import minilm.nn as nn
from helpers import host
from minilm.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from minilm.optim import AdamW, param_groups_for_weight_decay
from minilm.tensor import Tensor

FILES = ("model.safetensors", "optimizer.safetensors", "meta.json")


class Small(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = minilm.Generator(seed)
        self.wte = nn.Embedding(9, 4, generator=g)
        self.fc = nn.Linear(4, 4, generator=g)
        self.ln = nn.LayerNorm(4)


def _trained(seed, steps=2):
    """A model whose every weight (LayerNorm's too) and Adam moment is seed-specific."""
    model = Small(seed)
    opt = AdamW(param_groups_for_weight_decay(model, 0.1), lr=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)
        opt.step()
    return model, opt


def _weights(state) -> dict:
    return {k: host(v).copy() for k, v in state.items()}


def _equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def _save(path, seed, step=None):
    model, opt = _trained(seed)
    save_checkpoint(path, model, {"vocab": 9, "d": 4}, optimizer=opt, step=seed if step is None else step)
    return _weights(model.state_dict())


def _loaded(path) -> dict:
    """load_checkpoint + load_into (model and optimizer) a fresh model; its weights."""
    model, opt = _trained(seed=99, steps=0)
    load_checkpoint(path).load_into(model, opt)
    return _weights(model.state_dict())


def _data_start(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]  # safetensors: u64 header length, JSON header, then the data


def _edit(file: Path, edit):
    file.write_bytes(bytes(edit(bytearray(file.read_bytes()))))


# ---- 1. a flipped byte anywhere is caught and the file named ---------------------------------

def _flip(offset):
    def edit(b):
        b[offset(b)] ^= 0xFF
        return b
    return edit


def _swap(x: bytes, y: bytes):
    """Two same-shape tensors trade names: the header still parses, the values land in the wrong place."""
    def edit(b):
        return b.replace(x, b"\0" * len(x)).replace(y, x).replace(b"\0" * len(x), y)
    return edit


def _other_digest(b):  # one hex digit of the first recorded file digest
    i = b.index(b'"sha256": "') + len(b'"sha256": "')
    b[i] = ord("1") if b[i] != ord("1") else ord("2")
    return b


CORRUPTIONS = {
    "model data": ("model.safetensors", _flip(lambda b: _data_start(b) + 5)),
    "model header": ("model.safetensors", _swap(b'"fc.bias"', b'"ln.bias"')),
    "model header dtype F32 -> I32": ("model.safetensors", lambda b: b.replace(b'"F32"', b'"I32"', 1)),
    "optimizer data": ("optimizer.safetensors", _flip(lambda b: len(b) - 3)),
    "optimizer header": ("optimizer.safetensors", _swap(b'"state.2.exp_avg"', b'"state.3.exp_avg"')),
    "meta step": ("meta.json", lambda b: b.replace(b'"step": 2', b'"step": 7')),
    "meta config": ("meta.json", lambda b: b.replace(b'"vocab": 9', b'"vocab": 8')),
    "meta version 2 -> 1": ("meta.json", lambda b: b.replace(b'"version": 2', b'"version": 1')),
    "meta recorded digest": ("meta.json", _other_digest),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_file_is_named(tmp_path, case):
    name, edit = CORRUPTIONS[case]
    _save(tmp_path / "c", seed=2)
    before = (tmp_path / "c" / name).read_bytes()
    _edit(tmp_path / "c" / name, edit)
    after = (tmp_path / "c" / name).read_bytes()
    assert after != before and len(after) == len(before)
    # each edit leaves the file parseable: before the digests it loaded, silently, with other values
    with pytest.raises(CheckpointError, match=rf"{name} is (truncated or )?corrupt") as e:
        load_checkpoint(tmp_path / "c")
    if name != "meta.json":  # names the expected and the found digest
        found = hashlib.sha256(after).hexdigest()
        expected = json.loads((tmp_path / "c" / "meta.json").read_text())["files"][name]["sha256"]
        assert found in str(e.value) and expected in str(e.value)


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """Written before the digests: no files, no meta_sha256, version 1; it loads unchecked, but a
    dtype edit in its header is still refused, by load_state_dict."""
    path = tmp_path / "v1"
    weights = _save(path, seed=3)
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"], meta["meta_sha256"]
    meta["version"] = 1
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    c = load_checkpoint(path)
    assert c.meta["version"] == 1 and c.step == 3
    assert _equal(_loaded(path), weights)

    weights = _save(path, seed=4)                                   # a save replaces it with a version 2
    assert load_checkpoint(path).meta["version"] == ckpt.VERSION == 2 and _equal(_loaded(path), weights)

    (path / "meta.json").write_text(json.dumps(meta, indent=1))     # a v1 meta again: no digests
    _edit(path / "model.safetensors", lambda b: b.replace(b'"F32"', b'"I32"', 1))
    with pytest.raises(CheckpointError, match=r"dtype mismatches \(1\): fc\.bias: checkpoint int32 vs model float32"):
        _loaded(path)


# ---- 2. property: any mutation either loads the exact original or raises CheckpointError ---------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / "c"
    weights = _save(path, seed=5)
    model, opt = _trained(seed=5)
    return {name: (path / name).read_bytes() for name in FILES}, weights, opt.state_dict()


def _mutated(data, name: str, blob: bytes) -> bytes:
    """A truncation, or 1-8 bytes set to random values, all in a safetensors file's header or all
    in its data (so that a broken header does not hide what a data flip would do)."""
    b = bytearray(blob)
    if data.draw(st.integers(0, 4), label="truncate?") == 0:
        return bytes(b[:data.draw(st.integers(0, len(b) - 1), label="truncated to")])
    lo, hi = 0, len(b)
    if name != "meta.json":
        lo, hi = data.draw(st.sampled_from([(0, _data_start(blob)), (_data_start(blob), len(b))]), label="part")
    for _ in range(data.draw(st.integers(1, 8), label="bytes set")):
        b[data.draw(st.integers(lo, hi - 1), label="at")] = data.draw(st.integers(0, 255), label="to")
    return bytes(b)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_corruption_is_caught_or_changes_nothing(pristine, data):
    files, weights, opt_state = pristine
    name = data.draw(st.sampled_from(FILES), label="file")
    folder = Path(tempfile.mkdtemp())
    try:
        (folder / "c").mkdir()
        for n, blob in files.items():
            (folder / "c" / n).write_bytes(_mutated(data, n, blob) if n == name else blob)
        model, opt = _trained(seed=99, steps=0)
        try:
            load_checkpoint(folder / "c").load_into(model, opt)
        except CheckpointError:
            return
        assert _equal(_weights(model.state_dict()), weights)  # loaded: then exactly what was saved
        for i, per_param in opt.state_dict()["state"].items():
            for k, v in per_param.items():
                assert np.array_equal(host(v), host(opt_state["state"][i][k])), (i, k)
    finally:
        shutil.rmtree(folder)


# ---- 3. a save killed at every stage -----------------------------------------------------------

def _stage_hooks(on_call):
    """(module, attribute, replacement) for every step of a save that a kill can fall between: renames,
    fsyncs, deletions and file writes.  The i-th call runs ``on_call(i, kind, go, args)`` instead,
    where ``go()`` makes the real call."""
    counter = itertools.count()
    targets = [(os, "rename"), (os, "fsync"), (shutil, "rmtree"), (ckpt, "_write_file")]
    patches = []
    for module, attr in targets:
        real = getattr(module, attr)

        def hooked(*args, _real=real, _kind=attr, **kw):
            return on_call(next(counter), _kind, lambda: _real(*args, **kw), args)
        patches.append((module, attr, hooked))
    return patches


def _stages(tmp_path) -> list:
    """Instrument one save of v2 over v1: the list of (call index, kind) it makes."""
    seen = []

    def record(i, kind, go, args):
        seen.append((i, kind))
        return go()
    _save(tmp_path / "count" / "last", seed=1)
    mp = pytest.MonkeyPatch()
    try:
        for module, attr, hooked in _stage_hooks(record):
            mp.setattr(module, attr, hooked)
        _save(tmp_path / "count" / "last", seed=2)
    finally:
        mp.undo()
    return seen


def _killed_save(path, seed, stage, half_written):
    """Save ``seed``'s model at ``path`` in a forked child that dies (os._exit: no finally, no cleanup)
    just before call ``stage`` — or, with ``half_written``, in the middle of that file write."""
    model, opt = _trained(seed)
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            def on_call(i, kind, go, args):
                if i == stage:
                    if half_written:
                        file, data = args
                        Path(file).write_bytes(data[:len(data) // 2])
                    os._exit(1)
                return go()
            for module, attr, hooked in _stage_hooks(on_call):
                setattr(module, attr, hooked)
            save_checkpoint(path, model, {"vocab": 9, "d": 4}, optimizer=opt, step=seed)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_save_killed_at_any_stage_leaves_a_checkpoint_and_the_next_save_cleans_up(tmp_path):
    stages = _stages(tmp_path)
    kinds = [k for _, k in stages]
    assert kinds.count("rename") == 2 and kinds.count("_write_file") == 3 and "rmtree" in kinds and "fsync" in kinds
    runs = [(i, False) for i, _ in stages] + [(i, True) for i, k in stages if k == "_write_file"]
    outcomes, v2 = [], _weights(_trained(2)[0].state_dict())
    for stage, half in runs:
        parent = tmp_path / f"stage{stage}{'-half' if half else ''}"
        v1 = _save(parent / "last", seed=1)
        assert _killed_save(parent / "last", 2, stage, half) == 1  # it died where it was told to
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a recovery says what it did
            got = _loaded(parent / "last")
        assert _equal(got, v1) or _equal(got, v2), (stage, half)
        assert load_checkpoint(parent / "last").step == (1 if _equal(got, v1) else 2)
        assert os.listdir(parent) == ["last"], (stage, half)  # the load cleared the leftovers
        outcomes.append(1 if _equal(got, v1) else 2)
        v3 = _save(parent / "last", seed=3)
        assert _equal(_loaded(parent / "last"), v3) and os.listdir(parent) == ["last"]
    assert set(outcomes) == {1, 2}  # a kill before the renames keeps v1, after them gives v2


def test_the_next_save_also_clears_leftovers(tmp_path):
    """The killed save's leftovers do not wait for a load: the next save of that name clears them."""
    stages = _stages(tmp_path)
    between = [i for i, k in stages if k == "rename"][1]  # last stepped aside, the new one not yet in place
    _save(tmp_path / "run" / "last", seed=1)
    assert _killed_save(tmp_path / "run" / "last", 2, between, False) == 1
    left = sorted(os.listdir(tmp_path / "run"))
    assert len(left) == 2 and left[0].startswith(".last.old-") and left[1].startswith(".last.tmp-")
    with pytest.warns(UserWarning, match=rf"recovered {left[1]} as last, removed {left[0]}"):
        v3 = _save(tmp_path / "run" / "last", seed=3)
    assert os.listdir(tmp_path / "run") == ["last"] and _equal(_loaded(tmp_path / "run" / "last"), v3)


def test_last_missing_and_an_old_one_beside_it_is_recovered(tmp_path):
    """The issue's case: a kill between the two renames of an older minilm left no ``last``."""
    v1 = _save(tmp_path / "last", seed=1)
    os.rename(tmp_path / "last", tmp_path / ".last.old-0123")
    with pytest.warns(UserWarning, match=r"recovered \.last\.old-0123 as last"):
        assert _equal(_loaded(tmp_path / "last"), v1)
    assert os.listdir(tmp_path) == ["last"]


def test_recovery_prefers_a_complete_new_one_and_never_deletes_the_only_good_copy(tmp_path):
    _save(tmp_path / "a", seed=1)
    v2 = _save(tmp_path / "b", seed=2)
    os.rename(tmp_path / "a", tmp_path / ".last.old-1")
    os.rename(tmp_path / "b", tmp_path / ".last.tmp-2")
    shutil.copytree(tmp_path / ".last.tmp-2", tmp_path / ".last.tmp-3")
    (tmp_path / ".last.tmp-3" / "meta.json").unlink()               # killed before its meta.json: incomplete
    with pytest.warns(UserWarning, match=r"recovered \.last\.tmp-2 as last"):
        assert _equal(_loaded(tmp_path / "last"), v2)               # the complete new one, not the old one
    assert os.listdir(tmp_path) == ["last"]

    os.rename(tmp_path / "last", tmp_path / ".last.old-4")           # only a corrupt copy left
    _edit(tmp_path / ".last.old-4" / "model.safetensors", _flip(lambda b: len(b) - 1))
    with pytest.raises(CheckpointNotFoundError, match=r"left \.last\.old-4 beside it, none complete"):
        load_checkpoint(tmp_path / "last")
    assert os.listdir(tmp_path) == [".last.old-4"]                  # kept, for whoever wants to look

    (tmp_path / "last").mkdir()                                     # something at ``last`` that is no checkpoint:
    with pytest.raises(CheckpointError, match="has no meta.json"):  # the leftovers stay too
        load_checkpoint(tmp_path / "last")
    assert sorted(os.listdir(tmp_path)) == [".last.old-4", "last"]


# ---- 4. load_state_dict refuses another dtype unless told to cast ---------------------------------

def test_load_state_dict_refuses_another_dtype():
    m = Small(seed=0)
    m.register_buffer("ids", Tensor(np.arange(3, dtype=np.int64)))
    before = _weights(m.state_dict())
    wide = {k: host(v).astype(np.float64) if v.dtype == np.float32 else host(v) for k, v in m.state_dict().items()}
    wide = {k: v + 0.25 if v.dtype.kind == "f" else v for k, v in wide.items()}
    with pytest.raises(nn.StateDictError, match=r"dtype mismatches \(5\): wte\.weight: checkpoint float64 vs model "
                                                r"float32; fc\.weight: .*cast=True") as e:
        m.load_state_dict(wide)
    assert "ids" not in str(e.value)
    assert _equal(_weights(m.state_dict()), before)                 # nothing was changed

    assert m.load_state_dict(wide, cast=True) == ([], [])           # float64 → float32 when asked
    assert all(v.dtype == before[k].dtype for k, v in m.state_dict().items())
    np.testing.assert_array_equal(host(m.fc.weight.data), wide["fc.weight"].astype(np.float32))

    ints = dict(wide, **{"fc.bias": np.arange(4, dtype=np.int32)})  # int → float: never
    floats = dict(wide, ids=np.arange(3, dtype=np.float64))          # float → int: never
    kept = _weights(m.state_dict())
    for bad, key, dtypes in ((ints, "fc.bias", "int32 vs model float32"), (floats, "ids", "float64 vs model int64")):
        with pytest.raises(nn.StateDictError, match=rf"dtype mismatches \(1\): {key}: checkpoint {dtypes}"):
            m.load_state_dict(bad, cast=True)
        assert _equal(_weights(m.state_dict()), kept)
