#!/usr/bin/env python
"""A document-level task: the genre of a whole scene-length passage, read long, truncated, chunked, or by word counts.

    python experiments/long_document.py                     # every method, ~35 min of one core on an idle machine
    python experiments/long_document.py --embed-only --methods long &     # or split the embeddings
    python experiments/long_document.py --embed-only --methods trunc-512,trunc-256,chunks-512 &
    python experiments/long_document.py --report             # then the table from the cached embeddings
    python experiments/long_document.py --quick              # CI-sized (shorter passages, a few per play)

Passages of 8,000 characters (about 2,140 WordPiece tokens: 2,006–2,297 on the
first fifty) cut from every play (``passages``: non-overlapping, the first 5% of
each play skipped); the label is the play's genre.  Five train/test splits
(``genre_task(length=8000, seed=s)``, s = 0…4): three plays of each genre held
out, each side balanced by genre.  A passage is never seen with its own play's
label in training, so the task asks for genre, not for the play.

Each passage is turned into one vector by all-MiniLM-L6-v2 (sentence-transformers'
recipe: encoder, mean over real tokens, unit length), read four ways:

  long        to_longformer: positions copied out to 2,560, a sliding window of
              256 tokens in every layer, global [CLS]; the whole passage at once
  trunc-512   the dense model on the first 512 tokens (its native limit)
  trunc-256   the dense model on the first 256 tokens
  chunks-512  the dense model on consecutive 510-token pieces ([CLS] … [SEP] each),
              their embeddings' mean weighted by piece length, made unit length
              (the usual work-around)

then a multinomial logistic regression (a linear probe, no fine-tuning: fine-tuning
6 layers at 2,048 tokens is hours on this CPU) fitted on the train passages, its L2
strength chosen by 4-fold cross-validation grouped by play on the train side.
Next to them: word-level multinomial naive Bayes (``NaiveBayes``, α = 1) on the
whole passage.  Accuracy on the held-out plays' passages, mean ± s.d. over the
five splits, and the paired difference of long against each other row.

Embeddings are cached (DIR/emb-<method>.npy, keyed by the passages' SHA-256), so a
rerun only fits the probes.  Results: DIR/long_document.{md,json}; the recorded run
in experiments/results/long_document.* (the README and lesson 14 read it).
"""
from __future__ import annotations

import sys  # noqa: I001
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _common  # noqa: E402  first: limits threads before NumPy is imported

_common.limit_numba_threads()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from minilm.data import NaiveBayes, genre_task, load_shakespeare  # noqa: E402
from minilm.data.genre import GENRE_LABELS, passages  # noqa: E402
from minilm.models.base import to_longformer  # noqa: E402
from minilm.models.bert import Bert, find_minilm_l6_v2  # noqa: E402
from minilm.tensor import Tensor, no_grad  # noqa: E402
from minilm.tokenizers.wordpiece import WordPieceTokenizer  # noqa: E402

_common.limit_loaded_threads(numba=True)

FULL = dict(length=8000, positions=2560, window=256, native=512, short=256, per_work=None, splits=5)
QUICK = dict(length=1000, positions=512, window=32, native=64, short=32, per_work=4, splits=2)
METHODS = ("long", "trunc-512", "trunc-256", "chunks-512")
LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


# ---- passages -> vectors -----------------------------------------------------------------------------
def all_passages(corpus, cfg):
    plays = [w for w in corpus.works if w.genre in GENRE_LABELS]
    return passages(plays, cfg["length"], per_work=cfg["per_work"])          # [(text, label, title)]


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def embed_method(method, texts, cfg, stream=sys.stdout) -> np.ndarray:
    """(N, 384) unit vectors of ``texts`` read the ``method`` way (module docstring)."""
    folder = find_minilm_l6_v2()
    tok = WordPieceTokenizer.from_pretrained(folder)
    bert = Bert.from_pretrained(folder)
    native, short = cfg["native"], cfg["short"]
    if method == "long":
        to_longformer(bert, cfg["positions"], cfg["window"], global_tokens=(0,))
    out, t0 = [], time.perf_counter()
    with no_grad():
        for i, text in enumerate(texts):
            body = tok.encode(text, add_special_tokens=False, truncation=False).input_ids
            if method == "long":
                pieces = [body[:cfg["positions"] - 2]]
            elif method == "trunc-512":
                pieces = [body[:native - 2]]
            elif method == "trunc-256":
                pieces = [body[:short - 2]]
            else:                                                              # chunks of native - 2 tokens
                pieces = [body[s:s + native - 2] for s in range(0, len(body), native - 2)]
            vecs, sizes = [], [len(p) for p in pieces]
            for piece in pieces:
                ids = np.array([[tok.cls_id, *piece, tok.sep_id]], dtype=np.int64)   # (1, n + 2)
                vecs.append(bert.sentence_embedding(Tensor(ids)).numpy()[0])          # (d,), unit length
            v = np.average(vecs, axis=0, weights=sizes)                       # pieces weighted by length
            out.append(v / np.linalg.norm(v))
            if (i + 1) % 25 == 0 or i + 1 == len(texts):
                done = time.perf_counter() - t0
                print(f"  {method}: {i + 1}/{len(texts)} passages, {done:.0f} s, ETA "
                      f"{done / (i + 1) * (len(texts) - i - 1):.0f} s", file=stream, flush=True)
    return np.array(out)


def cached_embeddings(method, items, cfg, out: Path) -> np.ndarray:
    path, keys_path = out / f"emb-{method}.npy", out / f"emb-{method}.keys.json"
    keys = [key(t) for t, _, _ in items]
    if path.exists() and keys_path.exists() and json.loads(keys_path.read_text()) == keys:
        return np.load(path)
    t0 = time.perf_counter()
    emb = embed_method(method, [t for t, _, _ in items], cfg)
    np.save(path, emb)
    keys_path.write_text(json.dumps(keys))
    (out / f"emb-{method}.seconds").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return emb


# ---- the probe: multinomial logistic regression, L2 chosen by grouped cross-validation --------------------
def fit_logreg(X, y, lam, n_classes):
    """W (d + 1, C) minimising mean_i CE(softmax([x_i, 1] W), y_i) + lam/2 ‖W[:-1]‖² (L-BFGS)."""
    N, d = X.shape
    Xb = np.hstack([X, np.ones((N, 1))])                                       # (N, d + 1)
    Y = np.eye(n_classes)[y]                                                   # (N, C) one-hot

    def f(w):
        W = w.reshape(d + 1, n_classes)
        Z = Xb @ W
        Z -= Z.max(1, keepdims=True)
        P = np.exp(Z)
        P /= P.sum(1, keepdims=True)
        loss = -np.mean(np.log(P[np.arange(N), y] + 1e-300)) + lam / 2 * np.sum(W[:-1] ** 2)
        G = Xb.T @ (P - Y) / N                                                 # dL/dW = Xᵀ(P − Y)/N
        G[:-1] += lam * W[:-1]
        return loss, G.ravel()
    res = minimize(f, np.zeros((d + 1) * n_classes), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(d + 1, n_classes)


def predict(W, X):
    return (np.hstack([X, np.ones((len(X), 1))]) @ W).argmax(1)


def probe_accuracy(Xtr, ytr, groups, Xte, yte, n_classes, folds=4):
    """Standardise with the train statistics, choose lam by grouped k-fold CV, refit, score the test side."""
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    plays = np.array(sorted(set(groups)))
    fold_of = {p: i % folds for i, p in enumerate(np.random.default_rng(0).permutation(plays))}
    fold = np.array([fold_of[g] for g in groups])
    cv = {}
    for lam in LAMBDAS:
        right = 0
        for k in range(folds):
            W = fit_logreg(Xtr[fold != k], ytr[fold != k], lam, n_classes)
            right += int((predict(W, Xtr[fold == k]) == ytr[fold == k]).sum())
        cv[lam] = right / len(ytr)
    best = max(LAMBDAS, key=lambda lam: (cv[lam], lam))                        # ties: the stronger penalty
    W = fit_logreg(Xtr, ytr, best, n_classes)
    return float((predict(W, Xte) == yte).mean()), best, cv[best]


# ---- the study ---------------------------------------------------------------------------------------------
def run(cfg, out: Path, methods, tag: str):
    corpus = load_shakespeare()
    items = all_passages(corpus, cfg)
    index = {key(t): i for i, (t, _, _) in enumerate(items)}
    titles = [title for _, _, title in items]
    print(f"{len(items)} passages of {cfg['length']} characters from "
          f"{len(set(titles))} plays", flush=True)
    emb = {}
    for m in methods:
        print(f"== {m}", flush=True)
        emb[m] = cached_embeddings(m, items, cfg, out)
    rows = {m: [] for m in list(methods) + ["naive Bayes"]}
    detail = []
    for s in range(cfg["splits"]):
        task = genre_task(corpus, length=cfg["length"], seed=s)
        if cfg["per_work"] is not None:       # the quick run: only the passages embedded
            keep_tr = [i for i, t in enumerate(task.train_texts) if key(t) in index]
            keep_te = [i for i, t in enumerate(task.test_texts) if key(t) in index]
            task.train_texts = [task.train_texts[i] for i in keep_tr]
            task.train_labels = task.train_labels[keep_tr]
            task.test_texts = [task.test_texts[i] for i in keep_te]
            task.test_labels = task.test_labels[keep_te]
        tr = [index[key(t)] for t in task.train_texts]
        te = [index[key(t)] for t in task.test_texts]
        groups = [titles[i] for i in tr]
        split = {"seed": s, "test_plays": task.test_plays, "n_train": len(tr), "n_test": len(te)}
        for m in methods:
            acc, lam, cv = probe_accuracy(emb[m][tr], task.train_labels, groups, emb[m][te], task.test_labels,
                                          len(GENRE_LABELS))
            rows[m].append(acc)
            split[m] = {"accuracy": acc, "lambda": lam, "cv_accuracy": cv}
        nb = NaiveBayes(alpha=1.0).fit(task.train_texts, task.train_labels)
        rows["naive Bayes"].append(float(nb.score(task.test_texts, task.test_labels)))
        split["naive Bayes"] = {"accuracy": rows["naive Bayes"][-1]}
        detail.append(split)
        print(f"split {s}: " + ", ".join(f"{m} {rows[m][-1]:.3f}" for m in rows), flush=True)
    return report(rows, detail, cfg, out, tag, methods)


def report(rows, detail, cfg, out, tag, methods):
    seconds = {m: float((out / f"emb-{m}.seconds").read_text()) for m in methods
               if (out / f"emb-{m}.seconds").exists()}
    reads = {"long": f"whole passage (≤ {cfg['positions'] - 2} tokens), window {cfg['window']}, global [CLS]",
             "trunc-512": f"first {cfg['native'] - 2} tokens, dense", "trunc-256": f"first {cfg['short'] - 2} tokens, dense",
             "chunks-512": f"every {cfg['native'] - 2}-token piece, dense, mean", "naive Bayes": "every word"}
    lines = [f"# Genre of {cfg['length']:,}-character passages of held-out plays ({tag})", "",
             f"{cfg['splits']} splits (3 plays per genre held out); mean ± s.d. of test accuracy over the splits; "
             "chance 0.333.  MiniLM rows: frozen all-MiniLM-L6-v2 + a logistic-regression probe; "
             "Δ: the long reading minus this row, paired by split.", "",
             "| reading | what it reads | accuracy | Δ long − row | embedding time |", "|---|---|---|---|---|"]
    summary = {}
    for m, accs in rows.items():
        a = np.array(accs)
        d = np.array(rows["long"]) - a if "long" in rows and m != "long" else None
        summary[m] = {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
                      "per_split": accs}
        delta = "" if d is None else f"{d.mean():+.3f} ± {d.std(ddof=1) if len(d) > 1 else float('nan'):.3f}"
        if d is not None:
            summary[m]["delta_long"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else None}
        secs = f"{seconds[m]:.0f} s" if m in seconds else ""
        lines.append(f"| {m} | {reads[m]} | {a.mean():.3f} ± {summary[m]['sd']:.3f} | {delta} | {secs} |")
    (out / "long_document.md").write_text("\n".join(lines) + "\n")
    (out / "long_document.json").write_text(json.dumps({"config": cfg, "summary": summary, "splits": detail,
                                                        "embedding_seconds": seconds}, indent=1))
    print("\n".join(lines))
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: 1,000-character passages, 4 per play")
    ap.add_argument("--out", default=None, help="default out/long_document[_quick]")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"some of {','.join(METHODS)}")
    ap.add_argument("--embed-only", action="store_true", help="compute and cache the embeddings, fit nothing")
    ap.add_argument("--report", action="store_true", help="fit the probes on every method whose embeddings are cached")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = Path(args.out or ("out/long_document_quick" if args.quick else "out/long_document"))
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m.strip() for m in args.methods.split(","))
    if args.report:          # every method whose embeddings are cached
        methods = tuple(m for m in METHODS if (out / f"emb-{m}.npy").exists())
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; choose from {list(METHODS)}")
    if args.embed_only:
        items = all_passages(load_shakespeare(), cfg)
        for m in methods:
            cached_embeddings(m, items, cfg, out)
        return None
    return run(cfg, out, methods, "quick" if args.quick else "full")


if __name__ == "__main__":
    main()
