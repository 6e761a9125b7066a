"""The Triton kernels (forward + tangent, backward) in Triton's CPU interpreter.

Compared against float64 ``torch.func.jvp`` of explicit attention; the interpreter is ~30×
slower than eager PyTorch, so the shapes are small but odd (no dimension a multiple of the
blocks), and block sizes are forced small so several key and query blocks are visited.
"""

import pytest
import torch
from kernel_helpers import TOLERANCE, make_inputs, relative_error

from flowrl.kernels.reference import explicit_attention, explicit_attention_jvp

triton_jvp = pytest.importorskip("flowrl.kernels.triton_jvp", reason="needs flowrl[kernels]")

SHAPES = [  # (B, H, Nq, Nk, D)
    (2, 2, 77, 100, 16),
    (2, 1, 45, 45, 32),
    (2, 1, 33, 20, 64),
    (2, 1, 17, 29, 24),  # head dim padded to 32 inside the kernel
]


def run(shape, masked, causal, dtype, block_m=32, block_n=16):
    b, h, n_q, n_k, d = shape
    masters, xs, mask = make_inputs((b, h, n_q, d), (b, h, n_k, d), dtype, masked=masked)
    kwargs = dict(causal=causal, key_padding_mask=mask)
    scale = d**-0.5
    out, out_dot, lse = triton_jvp.attention_forward(
        *xs, scale=scale, block_m=block_m, block_n=block_n, **kwargs
    )
    expected, expected_dot = explicit_attention_jvp(*masters, **kwargs)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out_dot.dtype == dtype and lse.dtype == torch.float32
    assert relative_error(out, expected) <= tol
    assert relative_error(out_dot, expected_dot) <= tol

    grad_out = torch.randn(
        out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    q, k, v = (x.clone().requires_grad_(True) for x in masters[:3])
    explicit_attention(q, k, v, **kwargs).backward(grad_out)
    grads = triton_jvp.attention_backward(
        *xs[:3],
        out,
        lse,
        grad_out.to(dtype),
        scale=scale,
        block_m=block_m,
        block_n=block_n,
        **kwargs,
    )
    for got, want in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        assert got.dtype == dtype
        assert relative_error(got, want) <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_explicit(shape, masked, causal, dtype):
    run(shape, masked, causal, dtype)


def test_triton_default_blocks_and_large_head_dim():
    run(
        (1, 2, 70, 90, 128),
        masked=False,
        causal=True,
        dtype=torch.float32,
        block_m=None,
        block_n=None,
    )


def test_triton_forward_without_tangent_matches_with():
    _, xs, _ = make_inputs((1, 2, 40, 16), (1, 2, 50, 16), torch.float32)
    blocks = dict(block_m=32, block_n=16)
    plain, none, lse = triton_jvp.attention_forward(*xs[:3], scale=0.25, **blocks)
    with_tangent, _, lse2 = triton_jvp.attention_forward(*xs, scale=0.25, **blocks)
    assert none is None
    # With the same blocks, O's accumulation ignores the tangents: bitwise the same.
    assert torch.equal(plain, with_tangent) and torch.equal(lse, lse2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 is checked on CUDA only")
def test_triton_bfloat16_on_gpu():
    b, h, n_q, n_k, d = 2, 2, 300, 257, 64
    masters, _, _ = make_inputs((b, h, n_q, d), (b, h, n_k, d), torch.float64)
    xs = [x.to("cuda", torch.bfloat16) for x in masters]
    out, out_dot, _ = triton_jvp.attention_forward(*xs, scale=d**-0.5, causal=True)
    expected, expected_dot = explicit_attention_jvp(*masters, causal=True)
    assert relative_error(out.cpu(), expected) <= 2e-2
    assert relative_error(out_dot.cpu(), expected_dot) <= 2e-2
