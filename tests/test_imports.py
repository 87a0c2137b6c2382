"""What importing minilm does, and which way its imports point.

``import minilm`` (and any module of it but the kernels) imports no Numba and
changes no global setting; Numba arrives with the first kernel call, which also
picks the threading layer if the user has not.  The layers only point down:

    ops ──> kernels ──> backend ──> strict          tokenizers, data ──> backend
"""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minilm"

# Every module of minilm except the kernels (they are Numba) and __main__ (it runs the CLI).
_ALL_BUT_KERNELS = """
import importlib, pkgutil, minilm
for m in pkgutil.walk_packages(minilm.__path__, "minilm."):
    if not m.name.startswith("minilm.kernels") and m.name != "minilm.__main__":
        importlib.import_module(m.name)
import minilm.models, minilm.peft, minilm.train, minilm.finetune, minilm.distill, minilm.prune, minilm.cli
"""


def _run(code, env_update=None):
    """Run ``code`` in a fresh Python (NUMBA_THREADING_LAYER unset unless given); its last stdout line as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env.update(env_update or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_minilm_imports_no_numba():
    loaded = _run("import json, sys\nimport minilm\n" + _ALL_BUT_KERNELS + """
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite"))))
""")
    assert loaded == [], (f"importing minilm imported {len(loaded)} modules of {sorted({m.split('.')[0] for m in loaded})}; "
                          "kernels must be imported on first use")


_NUMBA_STATE = """
import numba, numpy as np
config = {k: repr(getattr(numba.config, k)) for k in dir(numba.config) if k.isupper()}
state = {"threading_layer": numba.config.THREADING_LAYER, "config": config, "geterr": np.geterr()}
"""


def test_importing_minilm_changes_no_global_setting():
    fresh = _run("import json" + _NUMBA_STATE + "print(json.dumps(state))")
    after = _run("import json, os\nenviron = dict(os.environ)\nimport minilm\n" + _ALL_BUT_KERNELS + _NUMBA_STATE + """
state["environ_unchanged"] = dict(os.environ) == environ
print(json.dumps(state))
""")
    assert after.pop("environ_unchanged"), "importing minilm changed os.environ"
    assert after["threading_layer"] == fresh["threading_layer"] == "default"
    changed = {k: (fresh["config"][k], v) for k, v in after["config"].items() if fresh["config"].get(k) != v}
    assert not changed, f"importing minilm changed numba.config: {changed}"
    assert after["geterr"] == fresh["geterr"]


def test_first_attention_call_loads_the_kernel_and_picks_workqueue():
    out = _run("""
import json, sys
import numpy as np
import minilm
import minilm.functional as F
assert "numba" not in sys.modules, "numba was imported before the first kernel call"
rng = np.random.default_rng(0)
q, k, v = (minilm.tensor(rng.standard_normal((1, 2, 5, 4)).astype(np.float32), requires_grad=True)
           for _ in range(3))
o = F.scaled_dot_product_attention(q, k, v, causal=True)
o.sum().backward()
grads = [t.grad.numpy().copy() for t in (q, k, v)]
for t in (q, k, v):
    t.grad = None
ref = F.scaled_dot_product_attention_reference(q, k, v, causal=True)
ref.sum().backward()
import numba
print(json.dumps({
    "numba": "numba" in sys.modules,
    "o": float(np.abs(o.numpy() - ref.numpy()).max()),
    "grads": max(float(np.abs(g - t.grad.numpy()).max()) for g, t in zip(grads, (q, k, v))),
    "config": numba.config.THREADING_LAYER,
    "layer": numba.threading_layer(),
}))
""")
    assert out["numba"]
    assert out["o"] < 1e-5 and out["grads"] < 1e-5, out
    assert out["config"] == out["layer"] == "workqueue"


def test_the_users_threading_layer_wins():
    out = _run("""
import json, os
import numba
from minilm.kernels import _choose_threading_layer
seen = {}
numba.config.THREADING_LAYER = "forksafe"          # chosen in code
_choose_threading_layer()
seen["code"] = numba.config.THREADING_LAYER
numba.config.THREADING_LAYER = "default"           # chosen in the environment (the default layer, explicitly)
os.environ["NUMBA_THREADING_LAYER"] = "default"
_choose_threading_layer()
seen["env"] = numba.config.THREADING_LAYER
del os.environ["NUMBA_THREADING_LAYER"]            # not chosen
_choose_threading_layer()
seen["none"] = numba.config.THREADING_LAYER
print(json.dumps(seen))
""")
    assert out == {"code": "forksafe", "env": "default", "none": "workqueue"}


# --------------------------------------------------------------------------
# Layering: which module may import which (module-level and function-level)
# --------------------------------------------------------------------------

def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name):
    """Every minilm module ``name`` imports anywhere in its AST (``from .. import backend`` -> minilm.backend)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m == "minilm" or m.startswith("minilm.")}, found


def _under(module, package):
    return module == package or module.startswith(package + ".")


def _violations(rule):
    bad = {}
    for name in MODULES:
        for imported in _imports(name)[0]:
            if imported != name and rule(name, imported):
                bad.setdefault(name, []).append(imported)
    return bad


def test_backend_and_strict_import_only_each_other_one_way():
    assert _imports("minilm.strict")[0] == set(), "minilm.strict must import nothing from minilm"
    assert _imports("minilm.backend")[0] <= {"minilm.strict"}, _imports("minilm.backend")[0]


def test_kernels_import_only_backend_and_strict():
    bad = _violations(lambda name, imp: _under(name, "minilm.kernels")
                      and not (_under(imp, "minilm.kernels") or imp in ("minilm.backend", "minilm.strict")))
    assert not bad, f"kernels import from above them: {bad}"


@pytest.mark.parametrize("low", ["minilm.tokenizers", "minilm.data"])
def test_tokenizers_and_data_import_no_tensors_or_ops(low):
    above = ("minilm.tensor", "minilm.function", "minilm.functional", "minilm.ops", "minilm.nn", "minilm.models")
    bad = _violations(lambda name, imp: _under(name, low) and (imp == "minilm" or any(_under(imp, a) for a in above)))
    assert not bad, f"{low} imports layers above it: {bad}"


def test_only_the_ops_import_kernels():
    bad = _violations(lambda name, imp: _under(imp, "minilm.kernels")
                      and not (_under(name, "minilm.ops") or _under(name, "minilm.kernels")))
    assert not bad, f"only minilm/ops may import minilm.kernels: {bad}"


def test_only_kernels_import_numba():
    bad = {}
    for name in MODULES:
        if _under(name, "minilm.kernels"):
            continue
        jit = {m for m in _imports(name)[1] if m.split(".")[0] in ("numba", "llvmlite")}
        if jit:
            bad[name] = sorted(jit)
    assert not bad, f"Numba code belongs under minilm/kernels: {bad}"


# The upper layers (ARCHITECTURE.md): each may import only from the layers below it.
TOP = ("minilm.cli", "minilm.pretrain", "minilm.train", "minilm.finetune", "minilm.generate", "minilm.demo",
       "minilm.__main__")
METHODS = ("minilm.peft", "minilm.distill", "minilm.prune")
ABOVE = {
    "minilm.nn": ("minilm.models",) + METHODS + TOP + ("minilm.optim", "minilm.checkpoint"),
    "minilm.optim": ("minilm.models",) + METHODS + TOP + ("minilm.checkpoint",),
    "minilm.checkpoint": ("minilm.models",) + METHODS + TOP,
    "minilm.models": METHODS + TOP + ("minilm.optim", "minilm.checkpoint", "minilm.data", "minilm.tokenizers",
                      "minilm.interpret"),
    "minilm.peft": TOP + ("minilm.distill", "minilm.prune"),
    "minilm.distill": TOP + ("minilm.peft", "minilm.prune"),
    "minilm.prune": TOP + ("minilm.peft", "minilm.distill"),
    "minilm.train": ("minilm.finetune", "minilm.pretrain", "minilm.cli", "minilm.models") + METHODS,
    "minilm.interpret": TOP + METHODS + ("minilm.optim", "minilm.checkpoint"),   # reads models, trains nothing
}


@pytest.mark.parametrize("low", sorted(ABOVE))
def test_upper_layers_point_down(low):
    bad = _violations(lambda name, imp: _under(name, low) and any(_under(imp, a) for a in ABOVE[low]))
    assert not bad, f"{low} imports a layer above or beside it: {bad}"


def test_peft_methods_do_not_import_back_into_core():
    """peft/core.py imports the methods; a method importing core back is the cycle issue 12 removed."""
    bad = _violations(lambda name, imp: _under(name, "minilm.peft") and name != "minilm.peft"
                      and name != "minilm.peft.core" and imp == "minilm.peft.core")
    assert not bad, f"PEFT methods import peft.core: {bad}"


def test_configs_import_nothing_from_minilm():
    assert _imports("minilm.configs")[0] == set(), "minilm.configs is used by every layer: it imports none"
