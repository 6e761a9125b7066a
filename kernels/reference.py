"""Attention and its forward-mode derivative in PyTorch: the specification and the CPU path.

Two implementations of the same maths (shapes: q (B, H, Nq, D), k and v (B, H, Nk, D)):

* :func:`explicit_attention` / :func:`explicit_attention_jvp`: softmax over an explicit
  Nq × Nk score matrix, differentiated by ``torch.func.jvp``. Memory quadratic in N; this is
  the specification every other path is tested against (in float64).
* :func:`blockwise_attention` / :func:`blockwise_attention_backward`: the FlashAttention-2
  recurrence in PyTorch blocks. It carries the attention output and its tangent through one
  online-softmax pass over key blocks, so memory stays linear in N. It is the CPU backend of
  :func:`flowrl.kernels.jvp_attention` and mirrors the Triton kernel step for step.

The tangent maths (DESIGN.md section 6). With S = scale·QKᵀ, P = softmax(S), O = PV and the
tangent Ṡ = scale·(Q̇Kᵀ + QK̇ᵀ)::

    Ȯ = (P ⊙ Ṡ)V + PV̇ − μ ⊙ O,        μ_i = Σ_j P_ij Ṡ_ij

since the softmax's derivative is Ṗ = P ⊙ (Ṡ − μ). In the online loop P is only known up to
its running normalizer, so three more accumulators ride along with FlashAttention's (m, l, Õ):
Ã = Σ P̃V̇, B̃ = Σ (P̃ ⊙ Ṡ)V and r = Σ rowsum(P̃ ⊙ Ṡ), rescaled by the same factor α whenever the
running max m grows. At the end O = Õ/l, μ = r/l and Ȯ = (Ã + B̃)/l − μ ⊙ O.

Masks. ``causal=True`` lets query i attend to keys j ≤ i (top-left aligned, as
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``); ``key_padding_mask``
is a bool tensor (B, Nk), True where a key is padding and must be ignored (as in
``torch.nn.MultiheadAttention``). A query row with no visible key outputs 0 with tangent 0 and
log-sum-exp −inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "attention_mask",
    "blockwise_attention",
    "blockwise_attention_backward",
    "check_attention_inputs",
    "explicit_attention",
    "explicit_attention_jvp",
]


def check_attention_inputs(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
) -> None:
    """Raise a clear error unless q (B, H, Nq, D), k, v (B, H, Nk, D) and the mask agree."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k, v must have shape (B, H, N, D); got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share batch, heads and head dim: q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(
            f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if key_padding_mask is not None:
        expected = (q.shape[0], k.shape[2])
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape (B, Nk) = {expected}, "
                f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )


def attention_mask(
    rows: Tensor,
    cols: Tensor,
    causal: bool,
    key_padding_mask: Tensor | None,
) -> Tensor | None:
    """Which (query, key) pairs take part, broadcastable to (B, H, len(rows), len(cols)).

    Args:
        rows: Query indices, shape (n,).
        cols: Key indices, shape (m,).
        causal: Queries see keys j ≤ i only.
        key_padding_mask: (B, Nk) bool, True at padding keys; indexed by ``cols``.

    Returns:
        A bool tensor (True = visible) of shape (1, 1, n, m) or (B, 1, n, m), or None when
        every pair is visible.
    """
    visible: Tensor | None = None
    if causal:
        visible = (cols[None, :] <= rows[:, None])[None, None]
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, cols][:, None, None, :]  # (B, 1, 1, m)
        visible = keep if visible is None else visible & keep
    return visible


def _default_scale(q: Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32 and the half types accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------- explicit (the spec)


def explicit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """softmax(scale·QKᵀ)V with the full score matrix, shape (B, H, Nq, D).

    Differentiable in every mode by autograd; rows with no visible key give 0.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    scores = torch.matmul(q, k.transpose(-1, -2)) * _default_scale(q, scale)
    visible = attention_mask(
        torch.arange(q.shape[2], device=q.device),
        torch.arange(k.shape[2], device=q.device),
        causal,
        key_padding_mask,
    )
    if visible is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    visible = visible.expand_as(scores)
    any_visible = visible.any(dim=-1, keepdim=True)
    # Empty rows get finite scores (0) so that no NaN enters the softmax or its tangent; their
    # probabilities are then zeroed.
    scores = scores.masked_fill(~visible, float("-inf")).masked_fill(~any_visible, 0.0)
    probs = torch.where(any_visible, torch.softmax(scores, dim=-1), 0.0)
    return torch.matmul(probs, v)


def explicit_attention_jvp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor,
    tk: Tensor,
    tv: Tensor,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Output and tangent of :func:`explicit_attention` by ``torch.func.jvp``.

    Args:
        q: Queries, shape (B, H, Nq, D).
        k: Keys, shape (B, H, Nk, D).
        v: Values, shape (B, H, Nk, D).
        tq: Tangent of q.
        tk: Tangent of k.
        tv: Tangent of v.
        **kwargs: ``scale``, ``causal``, ``key_padding_mask`` as in :func:`explicit_attention`.

    Returns:
        ``(O, Ȯ)``, each (B, H, Nq, D).
    """
    return torch.func.jvp(
        lambda a, b, c: explicit_attention(a, b, c, **kwargs),  # type: ignore[arg-type]
        (q, k, v),
        (tq, tk, tv),
    )


# ---------------------------------------------------------------------- blockwise (linear memory)


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor | None = None,
    tk: Tensor | None = None,
    tv: Tensor | None = None,
    *,
    scale: float | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    block_q: int = 1024,
    block_k: int = 256,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Attention output, its tangent and the log-sum-exp by online softmax over key blocks.

    The largest temporaries are (B, H, block_q, block_k) score blocks, so memory grows
    linearly with N. Half-precision inputs are computed in float32 and the results cast back.

    Args:
        q: Queries, shape (B, H, Nq, D).
        k: Keys, shape (B, H, Nk, D).
        v: Values, shape (B, H, Nk, D).
        tq: Tangent of q; pass tangents for a JVP, none of them for the forward only (in a
            JVP a missing one counts as zero).
        tk: Tangent of k.
        tv: Tangent of v.
        scale: Score scale, default 1/√D.
        causal: Query i sees keys j ≤ i.
        key_padding_mask: (B, Nk) bool, True at padding keys.
        block_q: Query rows per block.
        block_k: Keys per block of the online softmax.

    Returns:
        ``(O (B, H, Nq, D), Ȯ (B, H, Nq, D) or None, lse (B, H, Nq) float32/64)``; ``lse`` is
        the log-sum-exp of each row's visible scores (−inf for empty rows).
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    with_tangent = tq is not None or tk is not None or tv is not None
    tq, tk, tv = (
        (torch.zeros_like(x) if t is None else t for t, x in ((tq, q), (tk, k), (tv, v)))
        if with_tangent
        else (None, None, None)
    )
    scale = _default_scale(q, scale)
    acc_dtype = _accumulation_dtype(q.dtype)
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    device = q.device
    out = torch.empty(batch, heads, n_q, dim, device=device, dtype=q.dtype)
    out_dot = torch.empty_like(out) if with_tangent else None
    lse = torch.empty(batch, heads, n_q, device=device, dtype=acc_dtype)
    neg_inf = float("-inf")

    for q0 in range(0, n_q, block_q):
        q1 = min(q0 + block_q, n_q)
        rows = torch.arange(q0, q1, device=device)
        # Basic slices are views; only the masks need index tensors.
        qb = q[:, :, q0:q1].to(acc_dtype)
        tqb = tq[:, :, q0:q1].to(acc_dtype) if tq is not None else None
        m = torch.full((batch, heads, len(rows)), neg_inf, device=device, dtype=acc_dtype)
        l_sum = torch.zeros_like(m)
        o_acc = torch.zeros(batch, heads, len(rows), dim, device=device, dtype=acc_dtype)
        if with_tangent:
            a_acc, b_acc, r_sum = (
                torch.zeros_like(o_acc),
                torch.zeros_like(o_acc),
                torch.zeros_like(m),
            )
        # Causal rows never see keys past their own index: stop at the block's last row.
        k_stop = min(n_k, q0 + len(rows)) if causal else n_k
        for k0 in range(0, k_stop, block_k):
            k1 = min(k0 + block_k, k_stop)
            cols = torch.arange(k0, k1, device=device)
            kb, vb = k[:, :, k0:k1].to(acc_dtype), v[:, :, k0:k1].to(acc_dtype)
            s = torch.matmul(qb, kb.transpose(-1, -2)) * scale
            visible = attention_mask(rows, cols, causal, key_padding_mask)
            if visible is not None:
                s = s.masked_fill(~visible, neg_inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # A row with nothing visible yet keeps m = −inf; shift by 0 there to avoid inf − inf.
            shift = torch.where(torch.isneginf(m_new), 0.0, m_new)
            alpha = torch.exp(m - shift)
            p = torch.exp(s - shift[..., None])
            l_sum = l_sum * alpha + p.sum(dim=-1)
            o_acc = o_acc * alpha[..., None] + torch.matmul(p, vb)
            if with_tangent:
                tkb, tvb = tk[:, :, k0:k1].to(acc_dtype), tv[:, :, k0:k1].to(acc_dtype)
                s_dot = (
                    torch.matmul(tqb, kb.transpose(-1, -2))
                    + torch.matmul(qb, tkb.transpose(-1, -2))
                ) * scale
                ps = p * s_dot  # masked entries have p = 0
                a_acc = a_acc * alpha[..., None] + torch.matmul(p, tvb)
                b_acc = b_acc * alpha[..., None] + torch.matmul(ps, vb)
                r_sum = r_sum * alpha + ps.sum(dim=-1)
            m = m_new
        empty = l_sum == 0
        l_safe = torch.where(empty, 1.0, l_sum)[..., None]
        o_blk = o_acc / l_safe
        out[:, :, q0:q1] = o_blk.to(q.dtype)
        lse[:, :, q0:q1] = torch.where(
            empty, neg_inf, m + torch.log(torch.where(empty, 1.0, l_sum))
        )
        if with_tangent:
            mu = r_sum[..., None] / l_safe
            out_dot[:, :, q0:q1] = ((a_acc + b_acc) / l_safe - mu * o_blk).to(q.dtype)
    return out, out_dot, lse


def blockwise_attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    block_q: int = 1024,
    block_k: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) of the attention output, FlashAttention-2 style.

    Probabilities are recomputed block by block from the saved log-sum-exp
    (P = exp(S − lse)), and with Δ_i = Σ_d dO_id·O_id the score gradient is
    dS = P ⊙ (dO·Vᵀ − Δ); memory stays linear in N.

    Args:
        q: The forward's queries, shape (B, H, Nq, D).
        k: Its keys, shape (B, H, Nk, D).
        v: Its values, shape (B, H, Nk, D).
        out: Its output O, shape (B, H, Nq, D).
        lse: Its log-sum-exp, shape (B, H, Nq).
        grad_out: dL/dO, shape (B, H, Nq, D).
        scale: As in :func:`blockwise_attention`.
        causal: As in :func:`blockwise_attention`.
        key_padding_mask: As in :func:`blockwise_attention`.
        block_q: As in :func:`blockwise_attention`.
        block_k: As in :func:`blockwise_attention`.

    Returns:
        ``(dq, dk, dv)`` in the dtypes of q, k, v.
    """
    check_attention_inputs(q, k, v, key_padding_mask)
    scale = _default_scale(q, scale)
    acc_dtype = _accumulation_dtype(q.dtype)
    n_q, n_k = q.shape[2], k.shape[2]
    device = q.device
    dq = torch.zeros(q.shape, device=device, dtype=acc_dtype)
    dk = torch.zeros(k.shape, device=device, dtype=acc_dtype)
    dv = torch.zeros(v.shape, device=device, dtype=acc_dtype)
    delta = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(dim=-1)  # (B, H, Nq)
    for q0 in range(0, n_q, block_q):
        q1 = min(q0 + block_q, n_q)
        rows = torch.arange(q0, q1, device=device)
        qb, dob = q[:, :, q0:q1].to(acc_dtype), grad_out[:, :, q0:q1].to(acc_dtype)
        lse_b, delta_b = lse[:, :, q0:q1].to(acc_dtype), delta[:, :, q0:q1]
        k_stop = min(n_k, q0 + len(rows)) if causal else n_k
        for k0 in range(0, k_stop, block_k):
            k1 = min(k0 + block_k, k_stop)
            cols = torch.arange(k0, k1, device=device)
            kb, vb = k[:, :, k0:k1].to(acc_dtype), v[:, :, k0:k1].to(acc_dtype)
            s = torch.matmul(qb, kb.transpose(-1, -2)) * scale
            p = torch.exp(s - lse_b[..., None])
            visible = attention_mask(rows, cols, causal, key_padding_mask)
            if visible is not None:
                p = torch.where(visible, p, 0.0)
            # Empty rows (lse = −inf) have no visible entry, so p is already 0 there.
            dv[:, :, k0:k1] += torch.matmul(p.transpose(-1, -2), dob)
            ds = p * (torch.matmul(dob, vb.transpose(-1, -2)) - delta_b[..., None])
            dq[:, :, q0:q1] += torch.matmul(ds, kb) * scale
            dk[:, :, k0:k1] += torch.matmul(ds.transpose(-1, -2), qb) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
