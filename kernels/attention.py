"""JVP-aware attention: one autograd Function, two backends (Triton on CUDA, PyTorch blocks).

:func:`jvp_attention` is the entry point models call. It runs through
:class:`JVPAttentionFunction`, a ``torch.autograd.Function`` with ``forward``,
``setup_context``, ``backward`` and ``jvp``, so

* ordinary training (``loss.backward()``) gets dq, dk, dv from the FlashAttention-2 backward,
* ``torch.func.jvp(model, …)`` (continuous-time consistency training) gets the output tangent
  from the one-pass forward-mode kernel instead of differentiating an N × N softmax.

Backends: ``"triton"`` (:mod:`flowrl.kernels.triton_jvp`; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``"reference"`` (:func:`flowrl.kernels.reference.blockwise_attention`,
any device, linear memory) and ``"explicit"`` (plain softmax attention differentiated by
PyTorch itself: quadratic memory, for debugging and comparisons). ``"auto"`` picks Triton for
CUDA tensors when it is installed and the reference otherwise.

Gradients flow through the primal output only. The tangent Ȯ is not differentiable: sCM/rCM
only use it in a stop-gradient target (under ``torch.no_grad()`` or detached), and a backward
pass that reaches it (a loss on the tangent, as in MeanFlow-style objectives) raises a
``RuntimeError`` instead of silently dropping attention's share of the gradient; use
``backend="explicit"`` for such losses. Second-order derivatives (backward of backward, JVP of
the backward) are not implemented either.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from flowrl.kernels.reference import (
    blockwise_attention,
    blockwise_attention_backward,
    check_attention_inputs,
    explicit_attention,
)
from flowrl.optional import require

__all__ = [
    "BACKENDS",
    "JVPAttention",
    "JVPAttentionFunction",
    "attention_with_tangent",
    "jvp_attention",
]

BACKENDS = ("auto", "triton", "reference", "explicit")


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_module() -> ModuleType:
    """The Triton kernels (imported on first use; an ImportError names the extra)."""
    require("triton", "the Triton attention backend")
    from flowrl.kernels import triton_jvp

    return triton_jvp


def _resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → a concrete backend for this device; explicit choices are validated."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "reference"
    if backend == "triton":
        _triton_module()  # a clear ImportError if Triton is missing
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f'the "triton" backend runs on CUDA tensors (got {device.type}); on a CPU use '
                'backend="reference", or set TRITON_INTERPRET=1 before importing flowrl.kernels '
                "to run the kernel in Triton's interpreter"
            )
    return backend


def _unwrap(x: Tensor | None) -> Tensor | None:
    """The plain tensor under functorch's wrappers (Triton needs real storage).

    Inside ``torch.func`` transforms, an autograd Function's ``jvp`` (and, under
    ``torch.func.grad``, its ``backward``) sees tensors wrapped per transform level; PyTorch
    ops handle them, a Triton launch cannot. The kernels' results carry no graph anyway.
    """
    while x is not None and torch._C._functorch.is_functorch_wrapped_tensor(x):
        x = torch._C._functorch.get_unwrapped(x)
    return x


def _plain(fn: Any, *tensors: Tensor | None, **kwargs: Any) -> Any:
    """Call a Triton launcher on unwrapped tensors with functorch's transforms switched off.

    Without the switch, tensors the launcher allocates would be lifted into the active
    transform level (wrapped again) before the kernel sees them.
    """
    kwargs = {key: _unwrap(val) if isinstance(val, Tensor) else val for key, val in kwargs.items()}
    with torch._C._DisableFuncTorch():
        return fn(*(_unwrap(x) for x in tensors), **kwargs)


def _forward(
    backend: str,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tangents: tuple[Tensor | None, Tensor | None, Tensor | None],
    scale: float,
    causal: bool,
    key_padding_mask: Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    if backend == "triton":
        return _plain(
            _triton_module().attention_forward,
            q,
            k,
            v,
            *tangents,
            scale=scale,
            causal=causal,
            key_padding_mask=key_padding_mask,
        )
    return blockwise_attention(
        q, k, v, *tangents, scale=scale, causal=causal, key_padding_mask=key_padding_mask
    )


_TANGENT_NOT_DIFFERENTIABLE = (
    "flowrl.kernels.jvp_attention: backward reached the tangent (the forward-mode derivative "
    "Ȯ) of the fused attention, which is not differentiable; its gradient would be silently "
    "partial. Use the tangent only as a stop-gradient target (compute it under "
    "torch.no_grad() or .detach() it, as sCM/rCM do), or, for a loss that differentiates "
    'through the tangent (MeanFlow-style objectives), build the attention with backend="explicit" '
    "(plain softmax attention that PyTorch differentiates to any order)"
)


class _AttentionTangent(torch.autograd.Function):
    """Ȯ of the fused pass, as a node whose backward refuses instead of being a constant.

    ``apply(q, k, v, tq, tk, tv, key_padding_mask, scale, causal, backend)``. Inside
    :meth:`JVPAttentionFunction.jvp`, so that a backward pass through the tangent meets this
    node (wired to q, k, v and their tangents) and raises, rather than finding no graph.
    """

    @staticmethod
    def forward(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        tq: Tensor | None,
        tk: Tensor | None,
        tv: Tensor | None,
        key_padding_mask: Tensor | None,
        scale: float,
        causal: bool,
        backend: str,
    ) -> Tensor:
        """Ȯ (B, H, Nq, D) from one fused pass (autograd records nothing inside)."""
        if tq is None and tk is None and tv is None:
            return q.new_zeros((*q.shape[:-1], v.shape[-1]))
        _, out_dot, _ = _forward(backend, q, k, v, (tq, tk, tv), scale, causal, key_padding_mask)
        return out_dot

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        """Nothing to save: the backward only raises."""

    @staticmethod
    def backward(ctx: Any, grad_out_dot: Tensor) -> tuple[Any, ...]:
        """Always raises: see the module docstring."""
        raise RuntimeError(_TANGENT_NOT_DIFFERENTIABLE)


class JVPAttentionFunction(torch.autograd.Function):
    """Attention as an autograd Function with a FlashAttention backward and a fused JVP.

    ``apply(q, k, v, key_padding_mask, scale, causal, backend)`` returns ``(O, lse)``; the
    log-sum-exp is marked non-differentiable. Use :func:`jvp_attention` rather than calling
    this directly.
    """

    @staticmethod
    def forward(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None,
        scale: float,
        causal: bool,
        backend: str,
    ) -> tuple[Tensor, Tensor]:
        """O (B, H, Nq, D) and its log-sum-exp (B, H, Nq), without tangents."""
        out, _, lse = _forward(
            backend, q, k, v, (None, None, None), scale, causal, key_padding_mask
        )
        return out, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        """Save what backward (q, k, v, O, lse) and jvp (q, k, v) need."""
        q, k, v, key_padding_mask, scale, causal, backend = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.save_for_forward(q, k, v)
        ctx.key_padding_mask, ctx.scale, ctx.causal, ctx.backend = (
            key_padding_mask,
            scale,
            causal,
            backend,
        )

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_lse: Tensor | None) -> tuple[Any, ...]:
        """dq, dk, dv of the primal output (the lse output has no gradient)."""
        q, k, v, out, lse = ctx.saved_tensors
        kwargs = dict(scale=ctx.scale, causal=ctx.causal, key_padding_mask=ctx.key_padding_mask)
        if ctx.backend == "triton":
            backward = _triton_module().attention_backward
            grads = _plain(backward, q, k, v, out, lse, grad_out, **kwargs)
        else:
            grads = blockwise_attention_backward(q, k, v, out, lse, grad_out, **kwargs)
        return (*grads, None, None, None, None)

    @staticmethod
    def jvp(
        ctx: Any, tq: Tensor | None, tk: Tensor | None, tv: Tensor | None, *_: Any
    ) -> tuple[Any, ...]:
        """Ȯ from the tangents of q, k, v (None = zero); the lse output gets none.

        Ȯ is not differentiable: a backward pass through it raises (see the module docstring).
        """
        q, k, v = ctx.saved_tensors
        # One fused pass gives Ȯ (and recomputes O, which costs little extra once S and Ṡ
        # are formed): no N × N tensor. Run as a Function so that, when grad mode is on, Ȯ
        # carries a node whose backward refuses; under no_grad it stays a plain tensor.
        out_dot = _AttentionTangent.apply(
            q, k, v, tq, tk, tv, ctx.key_padding_mask, ctx.scale, ctx.causal, ctx.backend
        )
        return out_dot, None


def jvp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Scaled dot-product attention that supports ``torch.func.jvp`` with linear memory.

    Args:
        q: Queries, shape (B, H, Nq, D).
        k: Keys, shape (B, H, Nk, D).
        v: Values, shape (B, H, Nk, D).
        scale: Score scale, default 1/√D.
        causal: Query i attends to keys j ≤ i (top-left aligned, like SDPA's ``is_causal``).
        key_padding_mask: (B, Nk) bool, True at keys to ignore (as ``nn.MultiheadAttention``).
        backend: ``"auto"``, ``"triton"``, ``"reference"`` or ``"explicit"`` (see the module
            docstring).

    Returns:
        softmax(scale·QKᵀ)V, shape (B, H, Nq, D); rows with no visible key are 0.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = _resolve_backend(backend, q.device)
    if chosen == "explicit":
        return explicit_attention(
            q, k, v, scale=scale, causal=causal, key_padding_mask=key_padding_mask
        )
    out, _ = JVPAttentionFunction.apply(q, k, v, key_padding_mask, scale, causal, chosen)
    return out


def attention_with_tangent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor | None,
    tk: Tensor | None,
    tv: Tensor | None,
    *,
    scale: float | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """O, its tangent Ȯ and the log-sum-exp in one pass, outside autograd.

    For callers that propagate tangents by hand (a JVP-aware forward per block). Arguments as
    :func:`jvp_attention`; tangents of the inputs' shapes, None meaning zero.

    Returns:
        ``(O (B, H, Nq, D), Ȯ (B, H, Nq, D), lse (B, H, Nq))``.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    for name, t, x in (("tq", tq, q), ("tk", tk, k), ("tv", tv, v)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have shape {tuple(x.shape)}, got {tuple(t.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = _resolve_backend(backend, q.device)
    if chosen == "explicit":
        raise ValueError(
            'attention_with_tangent is the fused pass of the "triton" and "reference" '
            'backends; for "explicit" use torch.func.jvp on jvp_attention'
        )
    if tq is None and tk is None and tv is None:
        tv = torch.zeros_like(v)
    out, out_dot, lse = _forward(chosen, q, k, v, (tq, tk, tv), scale, causal, key_padding_mask)
    assert out_dot is not None
    return out, out_dot, lse


class JVPAttention(nn.Module):
    """Multi-head attention layer (projections + :func:`jvp_attention`), JVP-ready.

    Args:
        dim: Model width C.
        heads: Number of heads H (C must be divisible by H).
        qk_norm: RMSNorm on queries and keys per head (stabilizes attention logits, as in
            recent DiTs).
        causal: Causal self-attention.
        backend: Attention backend (see :func:`jvp_attention`).

    Shapes:
        x (B, N, C), optional context (B, M, C) for cross-attention → (B, N, C).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        qk_norm: bool = True,
        causal: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        self.heads, self.head_dim = heads, dim // heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.causal, self.backend = causal, backend

    def _split(self, x: Tensor) -> Tensor:
        """(B, N, C) → (B, H, N, D)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Self-attention over x, or cross-attention from x to ``context``."""
        source = x if context is None else context
        q = self.q_norm(self._split(self.to_q(x)))
        key, value = self.to_kv(source).chunk(2, dim=-1)
        k, v = self.k_norm(self._split(key)), self._split(value)
        out = jvp_attention(
            q,
            k,
            v,
            causal=self.causal,
            key_padding_mask=key_padding_mask,
            backend=self.backend,
        )
        return self.proj(out.transpose(1, 2).flatten(2))
