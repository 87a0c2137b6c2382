"""Greedy and beam search (minilm.decoding, Eq. D1–D4) on a toy language model: a fixed trigram
table of log-probabilities, so greedy, brute force and transformers' own beam search can be
computed on the same model."""
import itertools

import numpy as np
import pytest

from minilm.decoding import beam_search, greedy_search

EOS = 0


def toy_table(V, seed, scale=2.0, eos_shift=0.0):
    """log P(v | prev2, prev1) as a (V, V, V) table, float32-representable so torch sees the same numbers;
    eos_shift < 0 makes eos rarer, so the outputs run longer."""
    z = np.random.default_rng(seed).normal(size=(V, V, V)) * scale
    z[..., EOS] += eos_shift
    return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32).astype(np.float64)


def next_logp(table, prefix):
    """The toy model: log P(· | prefix) reads the last two tokens (0 stands in before the start)."""
    return table[prefix[-2] if len(prefix) >= 2 else 0, prefix[-1]]


def toy_model(table, n_rows, calls=None):
    """step/reorder whose state is each row's whole prefix (start token included), so a wrong reorder
    would score a beam with another beam's history."""
    def step(last, state):
        assert len({len(p) for p in state}) == 1, "rows are out of step"
        state = [p + (int(x),) for p, x in zip(state, last)]
        return np.stack([next_logp(table, p) for p in state]), state

    def reorder(state, beam_idx):
        K = n_rows // calls["B"] if calls is not None else None
        if calls is not None:
            calls["n"] += 1
            rows = np.arange(n_rows)
            assert beam_idx.shape == (n_rows,) and (beam_idx // K == rows // K).all(), "a beam left its item"
        return [state[i] for i in beam_idx]

    return step, reorder, [()] * n_rows


def sequence_score(table, start, seq, alpha):
    """D3 recomputed from scratch: Σ log P(y_t | start, y_<t) / |y|^α."""
    prefix, total = (start,), 0.0
    for y in seq:
        total += next_logp(table, prefix)[y]
        prefix += (y,)
    return total / len(seq) ** alpha


def search(table, starts, K, T, **kw):
    step, reorder, state = toy_model(table, len(starts) * K)
    return beam_search(step, np.array(starts), num_beams=K, max_new_tokens=T, eos_id=EOS, pad_id=-1,
                       reorder=reorder, state=state, return_scores=True, **kw)


def brute_force(table, start, V, T, alpha, min_new_tokens=0):
    """The best complete output: ends in eos before T tokens, or is any T tokens; eos not before min_new_tokens."""
    best = (-np.inf, None)
    for n in range(1, T + 1):
        for seq in itertools.product(range(V), repeat=n):
            eos_at = [i for i, y in enumerate(seq) if y == EOS]
            if (n < T and eos_at != [n - 1]) or (n == T and eos_at not in ([], [n - 1])):
                continue
            if eos_at and eos_at[0] < min_new_tokens:
                continue
            best = max(best, (sequence_score(table, start, seq, alpha), list(seq)))
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("early_stopping", [True, False])
def test_one_beam_is_greedy(seed, early_stopping):
    table = toy_table(6, seed)
    starts = [1, 2, 3]
    step, _, state = toy_model(table, len(starts))
    greedy = greedy_search(step, np.array(starts), max_new_tokens=8, eos_id=EOS, state=state)
    for b, s in enumerate(starts):                                    # argmax by hand
        prefix = [s]
        while len(prefix) <= 8 and (len(prefix) == 1 or prefix[-1] != EOS):
            prefix.append(int(next_logp(table, prefix).argmax()))
        assert greedy[b] == prefix[1:]
    for alpha in (0.0, 1.0, 2.0):
        seqs, scores = search(table, starts, 1, 8, length_penalty=alpha, early_stopping=early_stopping)
        assert seqs == greedy
        np.testing.assert_allclose(scores, [sequence_score(table, s, g, alpha) for s, g in zip(starts, greedy)])


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0, -1.0])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_exhaustive_beam_is_brute_force(alpha, early_stopping):
    """K ≥ V^T keeps every prefix, so the answer is the best sequence under D3 by enumeration."""
    V, T = 4, 4
    for seed, min_new in ((0, 0), (1, 0), (2, 2)):
        table = toy_table(V, seed, scale=1.0)
        seqs, scores = search(table, [1, 2], V ** T, T, length_penalty=alpha, early_stopping=early_stopping,
                              min_new_tokens=min_new)
        for b, s in enumerate([1, 2]):
            best_score, best_seq = brute_force(table, s, V, T, alpha, min_new)
            assert seqs[b] == best_seq and scores[b] == pytest.approx(best_score, abs=1e-12)


def test_beam_beats_greedy():
    """Greedy takes the likelier first token (p = .5) whose continuations are flat; two beams find
    the token (p = .4) after which eos is almost certain: log .4 + log .9 > log .5 + log(1/3)."""
    V = 4
    table = np.full((V, V, V), np.log(1 / V))
    table[0, 1] = np.log([.1, .0001, .5, .3999])           # after the start token 1
    table[1, 2] = np.log([.25, .25, .25, .25])
    table[1, 3] = np.log([.9, .03, .03, .04])
    step, reorder, state = toy_model(table, 1)
    greedy = greedy_search(step, np.array([1]), max_new_tokens=2, eos_id=EOS, state=state)
    (beam,), (score,) = search(table, [1], 2, 2, length_penalty=0.0)
    assert greedy == [[2, 0]] and beam == [3, 0]
    assert score == pytest.approx(np.log(.3999) + np.log(.9))
    assert score > sequence_score(table, 1, greedy[0], 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_reorder_keeps_each_beam_with_its_own_history(seed):
    """The state carries each row's prefix: reorder is called once per continued step with rows that
    stay inside their item, and the returned score (computed from the state's prefixes) equals the
    score of the returned tokens recomputed from scratch.  An identity reorder breaks that."""
    table = toy_table(7, seed, scale=1.0, eos_shift=-3.0)
    starts, K, T = [1, 2, 5], 3, 7
    calls = {"n": 0, "B": len(starts)}
    step, reorder, state = toy_model(table, len(starts) * K, calls)
    seqs, scores = beam_search(step, np.array(starts), num_beams=K, max_new_tokens=T, eos_id=EOS,
                               early_stopping=False, reorder=reorder, state=state, return_scores=True)
    assert 1 <= calls["n"] < T
    np.testing.assert_allclose(scores, [sequence_score(table, s, y, 1.0) for s, y in zip(starts, seqs)])
    for b, s in enumerate(starts):                         # a batch is its items searched one by one
        one, one_score = search(table, [s], K, T, early_stopping=False)
        assert one == [seqs[b]] and one_score[0] == pytest.approx(scores[b])

    step, _, state = toy_model(table, len(starts) * K)
    bad_seqs, bad_scores = beam_search(step, np.array(starts), num_beams=K, max_new_tokens=T, eos_id=EOS,
                                       reorder=lambda st, idx: st, state=state, return_scores=True)
    recomputed = [sequence_score(table, s, y, 1.0) for s, y in zip(starts, bad_seqs)]
    assert not np.allclose(bad_scores, recomputed)


def test_as_array_pads_and_max_tokens_zero():
    table = toy_table(5, 0)
    arr, scores = search(table, [1, 2, 3], 2, 6, as_array=True)
    seqs, _ = search(table, [1, 2, 3], 2, 6)
    assert arr.dtype == np.int64 and arr.shape == (3, max(map(len, seqs)))
    for row, s in zip(arr, seqs):
        assert row[:len(s)].tolist() == s and (row[len(s):] == -1).all()
    assert search(table, [1, 2], 3, 0) == ([[], []], pytest.approx([0.0, 0.0]))


def test_bad_arguments_and_bad_models():
    table = toy_table(5, 0)
    step, reorder, state = toy_model(table, 2)
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(step, np.array([1]), num_beams=0, max_new_tokens=3, eos_id=EOS)
    with pytest.raises(ValueError, match="start_ids"):
        beam_search(step, np.array([1.0]), num_beams=2, max_new_tokens=3, eos_id=EOS)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(step, np.array([1]), num_beams=2, max_new_tokens=3, eos_id=EOS, early_stopping="yes")
    with pytest.raises(ValueError, match="pad_id"):
        beam_search(step, np.array([1]), num_beams=2, max_new_tokens=3, eos_id=EOS, as_array=True)
    with pytest.raises(ValueError, match=r"\(N=2, V\)"):
        beam_search(lambda last, st: (np.zeros((1, 5)), st), np.array([1]), num_beams=2, max_new_tokens=3, eos_id=EOS)
    with pytest.raises(FloatingPointError, match="step 1"):
        beam_search(lambda last, st: (np.full((2, 5), np.nan), st), np.array([1]), num_beams=2,
                    max_new_tokens=3, eos_id=EOS)


@pytest.mark.parametrize("seed", [17, 33])
def test_matches_transformers_beam_search(seed):
    """transformers' generate on the same table (wrapped as a decoder-only PreTrainedModel whose prompt
    is the start token) gives the same ids and sequence scores, for α and every early_stopping.  On
    these two tables the three early_stopping settings give different answers at α = 2."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import CausalLMOutput
    V, K, T, B = 8, 3, 6, 3
    table = toy_table(V, seed)

    class ToyConfig(transformers.PretrainedConfig):
        model_type = "minilm-toy-table"

    class ToyLM(transformers.PreTrainedModel, transformers.GenerationMixin):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)

        def forward(self, input_ids, **kwargs):
            prev2 = input_ids[:, -2] if input_ids.shape[1] > 1 else torch.zeros_like(input_ids[:, -1])
            logits = torch.zeros(input_ids.shape + (V,))
            logits[:, -1] = self.table[prev2, input_ids[:, -1]]
            return CausalLMOutput(logits=logits)

    hf = ToyLM(ToyConfig(vocab_size=V, is_decoder=True)).eval()
    starts = [1, 2, 3][:B]
    for alpha, early_stopping, min_new in ((1.0, True, 0), (1.0, False, 0), (2.0, False, 0),
                                           (-0.5, "never", 0), (2.0, "never", 0), (0.0, True, 3)):
        out = hf.generate(input_ids=torch.tensor(starts)[:, None], num_beams=K, max_new_tokens=T,
                          min_new_tokens=min_new, eos_token_id=EOS, pad_token_id=V - 1, length_penalty=alpha,
                          early_stopping=early_stopping, do_sample=False, use_cache=False,
                          return_dict_in_generate=True, output_scores=True)
        ours, scores = search(table, starts, K, T, length_penalty=alpha, early_stopping=early_stopping,
                              min_new_tokens=min_new)
        for b in range(B):
            theirs = out.sequences[b, 1:].tolist()
            n = len(ours[b])
            assert theirs[:n] == ours[b] and all(y == V - 1 for y in theirs[n:]), (alpha, early_stopping)
        np.testing.assert_allclose(scores, out.sequences_scores.numpy(), rtol=1e-5, atol=1e-5)
