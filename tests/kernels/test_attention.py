"""The autograd Function and the module: torch.func.jvp and backward dispatch to the kernels."""

import os
import subprocess
import sys

import pytest
import torch
from kernel_helpers import make_inputs, relative_error
from torch import nn

from flowrl.kernels import JVPAttention, attention_with_tangent, jvp_attention
from flowrl.kernels.reference import explicit_attention, explicit_attention_jvp

try:
    import triton  # noqa: F401

    KERNEL_BACKENDS = ["reference", "triton"]
except ImportError:  # flowrl[kernels] not installed: the CPU path is still tested
    KERNEL_BACKENDS = ["reference"]


class Block(nn.Module):
    """A pre-norm transformer block: attention and an MLP, each residual."""

    def __init__(self, dim=32, heads=2, backend="reference", causal=False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = JVPAttention(dim, heads, causal=causal, backend=backend)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, context=None, key_padding_mask=None):
        ctx = None if context is None else self.norm1(context)
        x = x + self.attn(self.norm1(x), ctx, key_padding_mask)
        return x + self.mlp(self.norm2(x))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_func_jvp_through_block_matches_explicit(backend, causal):
    torch.manual_seed(0)
    block = Block(backend=backend, causal=causal)
    x, tx = torch.randn(2, 37, 32), torch.randn(2, 37, 32)
    params = dict(block.named_parameters())
    tangents = {name: torch.randn_like(p) for name, p in params.items()}

    def run(attn_backend):
        block.attn.backend = attn_backend
        # Tangents on the input and on every weight, as consistency training needs.
        return torch.func.jvp(
            lambda xx, pp: torch.func.functional_call(block, pp, (xx,)),
            (x, params),
            (tx, tangents),
        )

    out, out_dot = run(backend)
    expected, expected_dot = run("explicit")
    assert relative_error(out, expected) <= 1e-5
    assert relative_error(out_dot, expected_dot) <= 1e-5


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backward_and_func_grad_match_explicit(backend):
    torch.manual_seed(1)
    block = Block(backend=backend)
    x = torch.randn(2, 29, 32)
    context = torch.randn(2, 41, 32)  # cross-attention, Nq != Nk
    mask = torch.zeros(2, 41, dtype=torch.bool)
    mask[0, 30:] = True

    def grads(attn_backend):
        block.attn.backend = attn_backend
        block.zero_grad()
        block(x, context, mask).square().mean().backward()
        return [p.grad.clone() for p in block.parameters()]

    for got, want in zip(grads(backend), grads("explicit"), strict=True):
        assert relative_error(got, want) <= 1e-5

    q, k, v = make_inputs((2, 2, 20, 16), (2, 2, 31, 16), torch.float32)[1][:3]
    loss = lambda fn: lambda qq: fn(qq, k, v).square().sum()  # noqa: E731
    got = torch.func.grad(loss(lambda *a: jvp_attention(*a, backend=backend)))(q)
    want = torch.func.grad(loss(explicit_attention))(q)
    assert relative_error(got, want) <= 1e-5


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_tangent_refuses_backward_and_output_keeps_its_graph(backend):
    masters, xs, _ = make_inputs((1, 2, 12, 16), (1, 2, 12, 16), torch.float32)
    q = xs[0].clone().requires_grad_(True)
    out, out_dot = torch.func.jvp(
        lambda a: jvp_attention(a, xs[1], xs[2], backend=backend), (q,), (xs[3],)
    )
    assert out.requires_grad
    _, expected_dot = explicit_attention_jvp(
        *masters[:4], torch.zeros_like(masters[1]), torch.zeros_like(masters[2])
    )
    assert relative_error(out_dot, expected_dot) <= 1e-5
    out.square().sum().backward(retain_graph=True)  # the primal output trains as usual
    assert q.grad is not None and torch.isfinite(q.grad).all()
    with pytest.raises(RuntimeError, match="tangent .* is not differentiable"):
        out_dot.square().sum().backward()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_loss_on_the_tangent_raises_instead_of_partial_gradients(backend):
    """A MeanFlow-style loss on the JVP used to get zero gradient from the attention weights."""
    torch.manual_seed(2)
    block = Block(backend=backend)
    x, tx = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    # torch.func.jvp (what consistency training calls) and forward-mode AD dual tensors.
    _, out_dot = torch.func.jvp(block, (x,), (tx,))
    with pytest.raises(RuntimeError, match='not differentiable.*backend="explicit"'):
        out_dot.square().mean().backward()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, tx)
        tangent = torch.autograd.forward_ad.unpack_dual(block(dual)).tangent
        with pytest.raises(RuntimeError, match="not differentiable"):
            tangent.sum().backward()
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.func.grad(lambda xx: torch.func.jvp(block, (xx,), (tx,))[1].sum())(x)
    # Stop-gradient uses (sCM/rCM targets) are unaffected: no_grad, or a detached tangent.
    with torch.no_grad():
        _, target = torch.func.jvp(block, (x,), (tx,))
    assert target.grad_fn is None
    out, out_dot = torch.func.jvp(block, (x,), (tx,))
    block.zero_grad()
    (out - out_dot.detach()).square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    # The explicit backend differentiates through the tangent: every weight gets a gradient.
    block.attn.backend = "explicit"
    block.zero_grad()
    torch.func.jvp(block, (x,), (tx,))[1].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.attn.parameters())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_attention_with_tangent(backend):
    masters, xs, mask = make_inputs((2, 2, 25, 32), (2, 2, 40, 32), torch.float32, masked=True)
    out, out_dot, lse = attention_with_tangent(
        *xs, causal=True, key_padding_mask=mask, backend=backend
    )
    expected, expected_dot = explicit_attention_jvp(*masters, causal=True, key_padding_mask=mask)
    assert relative_error(out, expected) <= 1e-5
    assert relative_error(out_dot, expected_dot) <= 1e-5
    assert lse.shape == (2, 2, 25)


def test_backend_choice_and_errors(monkeypatch):
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        jvp_attention(q, q, q, backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        JVPAttention(16, 2, backend="flash")
    with pytest.raises(ValueError, match="divisible"):
        JVPAttention(30, 4)
    with pytest.raises(ValueError, match="tk must have shape"):
        attention_with_tangent(q, q, q, None, q[:, :, :2], None)
    with pytest.raises(ValueError, match="explicit"):
        attention_with_tangent(q, q, q, q, q, q, backend="explicit")
    if "triton" in KERNEL_BACKENDS:
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            jvp_attention(q, q, q, backend="triton")
    # auto on a CPU tensor is the blockwise reference: same as asking for it.
    torch.testing.assert_close(jvp_attention(q, q, q), jvp_attention(q, q, q, backend="reference"))


def test_import_flowrl_kernels_does_not_import_triton():
    code = "import sys, flowrl.kernels; print('triton' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "False"
