"""Padding masks where attention and pooling meet them: a prefix in front of masked keys, and
'last' pooling on either padding side (minilm.models.base.pool)."""
import numpy as np
import pytest

import minilm
import minilm.functional as F
from helpers import host, to_tensor
from minilm.models.base import pool


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_prefix_and_padding_mask(causal, device):
    rng = np.random.default_rng(1)
    B, H, T, m, hs = 2, 2, 5, 3, 4
    q = rng.standard_normal((B, H, T, hs))
    k = rng.standard_normal((B, H, m + T, hs))
    v = rng.standard_normal((B, H, m + T, hs))
    kpm = np.array([[False, False, False, True, True], [False, True, False, False, True]])

    def run(k_, fn=F.scaled_dot_product_attention):
        with minilm.no_grad():
            return host(fn(to_tensor(q, device), to_tensor(k_, device), to_tensor(v, device), causal=causal,
                           key_padding_mask=to_tensor(kpm, device), n_prefix=m))

    out = run(k)
    np.testing.assert_allclose(out, run(k, F.scaled_dot_product_attention_reference), rtol=0, atol=1e-12)
    real = ~kpm                                              # query rows at real positions
    for j in range(m):                                       # every row attends to every prefix key
        k2 = k.copy()
        k2[:, :, j] += 3.0
        changed = np.abs(run(k2) - out).max(axis=-1)         # (B, H, T)
        assert np.all(changed > 1e-8), f"a row ignores prefix key {j}"
    for b, t in zip(*np.nonzero(kpm)):                       # no row attends to a padded key
        k2 = k.copy()
        k2[b, :, m + t] += 3.0
        v2 = v.copy()
        v2[b, :, m + t] += 3.0
        with minilm.no_grad():
            o2 = host(F.scaled_dot_product_attention(to_tensor(q, device), to_tensor(k2, device),
                                                     to_tensor(v2, device), causal=causal,
                                                     key_padding_mask=to_tensor(kpm, device), n_prefix=m))
        np.testing.assert_array_equal(o2[b][:, real[b]], out[b][:, real[b]])
        np.testing.assert_array_equal(o2, out)
    # the gradients of the fused op agree with central differences under the same masks
    tq, tk, tv = (to_tensor(a, device, requires_grad=True) for a in (q, k, v))
    minilm.gradcheck(lambda a, b_, c: F.scaled_dot_product_attention(
        a, b_, c, causal=causal, key_padding_mask=to_tensor(kpm, device), n_prefix=m), [tq, tk, tv],
        full_limit=0, n_entries=6)


def test_last_pooling_finds_the_last_real_token_on_either_side():
    """pool(..., "last") picks the last position whose mask is 1, for right and for left padding."""
    H = minilm.tensor(np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0],      # right padding: last real token at 2
                     [0, 0, 1, 1, 1]])     # left padding: at 4
    out = pool(H, mask, "last").numpy()
    np.testing.assert_array_equal(out, H.numpy()[[0, 1], [2, 4]])
