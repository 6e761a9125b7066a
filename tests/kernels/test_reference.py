"""The blockwise PyTorch path against the specification (explicit softmax + torch.func.jvp)."""

import pytest
import torch
from kernel_helpers import TOLERANCE, make_inputs, relative_error

from flowrl.kernels.reference import (
    blockwise_attention,
    blockwise_attention_backward,
    explicit_attention,
    explicit_attention_jvp,
)

SHAPES = [  # (B, H, Nq, Nk, D): odd N, cross-attention, D from 16 to 128
    (2, 3, 77, 100, 16),
    (2, 1, 77, 100, 32),
    (2, 2, 50, 37, 64),
    (2, 1, 19, 45, 128),
]


def explicit_gradients(masters, grad_out, **kwargs):
    q, k, v = (x.clone().requires_grad_(True) for x in masters[:3])
    explicit_attention(q, k, v, **kwargs).backward(grad_out)
    return q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_blockwise_matches_explicit_jvp(shape, masked, causal, dtype):
    b, h, n_q, n_k, d = shape
    masters, xs, mask = make_inputs((b, h, n_q, d), (b, h, n_k, d), dtype, masked=masked)
    kwargs = dict(causal=causal, key_padding_mask=mask)
    out, out_dot = explicit_attention_jvp(*masters, **kwargs)
    # Small, non-dividing blocks exercise the online rescaling and the ragged edges.
    got, got_dot, lse = blockwise_attention(*xs, block_q=16, block_k=24, **kwargs)
    tol = TOLERANCE[dtype]
    assert got.dtype == dtype and got_dot.dtype == dtype
    assert relative_error(got, out) <= tol
    assert relative_error(got_dot, out_dot) <= tol

    grad_out = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    expected = explicit_gradients(masters, grad_out, **kwargs)
    grads = blockwise_attention_backward(
        *xs[:3], got, lse, grad_out.to(dtype), block_q=16, block_k=24, **kwargs
    )
    for g, e in zip(grads, expected, strict=True):
        assert g.dtype == dtype
        assert relative_error(g, e) <= tol


def test_log_sum_exp_and_empty_rows():
    masters, _, mask = make_inputs((2, 2, 30, 16), (2, 2, 40, 16), torch.float64, masked=True)
    q, k, v = masters[:3]
    out, _, lse = blockwise_attention(q, k, v, causal=True, key_padding_mask=mask, block_k=7)
    scores = q @ k.transpose(-1, -2) / 4.0
    visible = ~mask[:, None, None, :] & torch.ones(30, 40, dtype=torch.bool).tril()
    expected = torch.logsumexp(scores.masked_fill(~visible, float("-inf")), dim=-1)
    torch.testing.assert_close(lse, expected, rtol=1e-12, atol=0)
    # Batch 1 sees key 20 only: causal rows 0-19 see nothing -> output 0, lse -inf.
    assert torch.isneginf(lse[1, :, :20]).all()
    assert out[1, :, :20].eq(0).all()
    assert torch.isfinite(lse[1, :, 20:]).all()


def test_forward_only_and_partial_tangents():
    masters, _, _ = make_inputs((1, 2, 21, 16), (1, 2, 33, 16), torch.float64)
    q, k, v, tq, _, _ = masters
    out, out_dot, _ = blockwise_attention(q, k, v)
    assert out_dot is None
    torch.testing.assert_close(out, explicit_attention(q, k, v), rtol=1e-12, atol=1e-12)
    # A missing tangent counts as zero.
    _, partial, _ = blockwise_attention(q, k, v, tq, None, None, block_k=8)
    zeros = torch.zeros_like(k)
    _, expected = explicit_attention_jvp(q, k, v, tq, zeros, zeros)
    torch.testing.assert_close(partial, expected, rtol=1e-12, atol=1e-12)


def test_bad_inputs_are_refused():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"\(B, H, N, D\)"):
        blockwise_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="share batch, heads and head dim"):
        blockwise_attention(q, torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match="k and v"):
        blockwise_attention(q, q, torch.randn(1, 2, 6, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        blockwise_attention(q, q, q, key_padding_mask=torch.zeros(1, 5))
    with pytest.raises(TypeError, match="floating dtype"):
        blockwise_attention(q, q, q.double())
    with pytest.raises(ValueError, match="block sizes"):
        blockwise_attention(q, q, q, block_k=0)
