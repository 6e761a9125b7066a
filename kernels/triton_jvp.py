"""Triton kernels: attention with its tangent in one FlashAttention-2 pass, and its backward.

Imported only on first use (the ``kernels`` extra); :mod:`flowrl.kernels.attention` chooses
this backend for CUDA tensors. The maths and the masking conventions are those of
:mod:`flowrl.kernels.reference`, which mirrors these kernels loop for loop:

* :func:`attention_forward` launches one program per (query block, batch·head). It streams key
  blocks through an online softmax with FlashAttention's accumulators (m, l, Õ) and, when
  tangents are given, three more (Ã = Σ P̃V̇, B̃ = Σ (P̃ ⊙ Ṡ)V, r = Σ rowsum(P̃ ⊙ Ṡ)), all
  rescaled by the same α. It writes O, Ȯ and the log-sum-exp.
* :func:`attention_backward` recomputes probabilities from the saved log-sum-exp: one kernel
  per key block accumulates dK and dV over query blocks, one per query block accumulates dQ
  over key blocks (no atomics).

Scores, softmax statistics and accumulators are float32 for every input dtype; float32 inputs
multiply in IEEE float32 (``input_precision="ieee"``: TF32 would cost ~1e−3 relative error);
half inputs multiply in their own dtype with float32 accumulation, as FlashAttention does.
Any N works (masked loads); head dims up to 256 are padded to a power of two ≥ 16.

On a CPU the kernels run under Triton's interpreter (set ``TRITON_INTERPRET=1`` before this
module is imported): slow, but exact enough for the tests (the interpreter gets bfloat16
wrong, so bfloat16 is checked on GPUs only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["attention_backward", "attention_forward", "block_sizes"]

MAX_HEAD_DIM = 256


@triton.jit
def _visible(rows, cols, n_q, n_k, batch, KPM, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask of the (query, key) pairs that take part."""
    visible = (rows[:, None] < n_q) & (cols[None, :] < n_k)
    if CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None])
    if HAS_KPM:
        pad = tl.load(KPM + batch * n_k + cols, mask=cols < n_k, other=1)
        visible = visible & (pad == 0)[None, :]
    return visible


@triton.jit
def _forward_kernel(
    Q,
    K,
    V,
    TQ,
    TK,
    TV,
    OUT,
    OUT_DOT,
    LSE,
    KPM,
    scale,
    n_q,
    n_k,
    heads,
    head_dim,
    HAS_TANGENT: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_offsets = bh * n_q * head_dim + rows[:, None] * head_dim + dims[None, :]
    q_mask = (rows[:, None] < n_q) & (dims[None, :] < head_dim)
    q = tl.load(Q + q_offsets, mask=q_mask, other=0.0)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_TANGENT:
        tq = tl.load(TQ + q_offsets, mask=q_mask, other=0.0)
        a_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        r_sum = tl.zeros([BLOCK_M], tl.float32)

    k_stop = n_k
    if CAUSAL:
        # Query i sees keys j <= i: this block needs keys below its last row + 1.
        k_stop = tl.minimum(n_k, (pid_m + 1) * BLOCK_M)
    for start in range(0, k_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_offsets = bh * n_k * head_dim + cols[:, None] * head_dim + dims[None, :]
        kv_mask = (cols[:, None] < n_k) & (dims[None, :] < head_dim)
        k = tl.load(K + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_offsets, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        visible = _visible(rows, cols, n_q, n_k, batch, KPM, CAUSAL, HAS_KPM)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        # Rows with nothing visible so far keep m = -inf: shift by 0 to avoid inf - inf.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - shift)
        p = tl.exp(s - shift[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        if HAS_TANGENT:
            tk = tl.load(TK + kv_offsets, mask=kv_mask, other=0.0)
            tv = tl.load(TV + kv_offsets, mask=kv_mask, other=0.0)
            s_dot = tl.dot(tq, tl.trans(k), input_precision=PRECISION)
            s_dot = (s_dot + tl.dot(q, tl.trans(tk), input_precision=PRECISION)) * scale
            ps = p * s_dot  # p = 0 wherever a pair is masked
            a_acc = a_acc * alpha[:, None] + tl.dot(p.to(tv.dtype), tv, input_precision=PRECISION)
            b_acc = b_acc * alpha[:, None] + tl.dot(ps.to(v.dtype), v, input_precision=PRECISION)
            r_sum = r_sum * alpha + tl.sum(ps, 1)
        m = m_new

    empty = l_sum == 0.0
    l_safe = tl.where(empty, 1.0, l_sum)
    out = acc / l_safe[:, None]
    tl.store(OUT + q_offsets, out.to(OUT.dtype.element_ty), mask=q_mask)
    lse = tl.where(empty, float("-inf"), m + tl.log(l_safe))
    tl.store(LSE + bh * n_q + rows, lse, mask=rows < n_q)
    if HAS_TANGENT:
        out_dot = (a_acc + b_acc) / l_safe[:, None] - (r_sum / l_safe)[:, None] * out
        tl.store(OUT_DOT + q_offsets, out_dot.to(OUT_DOT.dtype.element_ty), mask=q_mask)


@triton.jit
def _probs_and_score_grads(q, k, v, do, lse, delta, visible, scale, PRECISION: tl.constexpr):
    """P = exp(S − lse) and dS = P ⊙ (dO·Vᵀ − Δ) of one (query, key) block pair."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    # Empty rows (lse = -inf) have no visible pair, so the where keeps p finite.
    p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit
def _backward_kv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    KPM,
    scale,
    n_q,
    n_k,
    heads,
    head_dim,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // heads
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    kv_offsets = bh * n_k * head_dim + cols[:, None] * head_dim + dims[None, :]
    kv_mask = (cols[:, None] < n_k) & (dims[None, :] < head_dim)
    k = tl.load(K + kv_offsets, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_offsets, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    q_start = 0
    if CAUSAL:
        # Only queries i >= j see key j.
        q_start = pid_n * BLOCK_N
    for start in range(q_start, n_q, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        q_offsets = bh * n_q * head_dim + rows[:, None] * head_dim + dims[None, :]
        q_mask = (rows[:, None] < n_q) & (dims[None, :] < head_dim)
        q = tl.load(Q + q_offsets, mask=q_mask, other=0.0)
        do = tl.load(DO + q_offsets, mask=q_mask, other=0.0)
        lse = tl.load(LSE + bh * n_q + rows, mask=rows < n_q, other=0.0)
        delta = tl.load(DELTA + bh * n_q + rows, mask=rows < n_q, other=0.0)
        visible = _visible(rows, cols, n_q, n_k, batch, KPM, CAUSAL, HAS_KPM)
        p, ds = _probs_and_score_grads(q, k, v, do, lse, delta, visible, scale, PRECISION)
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    tl.store(DK + kv_offsets, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_offsets, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _backward_q_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    KPM,
    scale,
    n_q,
    n_k,
    heads,
    head_dim,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q_offsets = bh * n_q * head_dim + rows[:, None] * head_dim + dims[None, :]
    q_mask = (rows[:, None] < n_q) & (dims[None, :] < head_dim)
    q = tl.load(Q + q_offsets, mask=q_mask, other=0.0)
    do = tl.load(DO + q_offsets, mask=q_mask, other=0.0)
    lse = tl.load(LSE + bh * n_q + rows, mask=rows < n_q, other=0.0)
    delta = tl.load(DELTA + bh * n_q + rows, mask=rows < n_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    k_stop = n_k
    if CAUSAL:
        k_stop = tl.minimum(n_k, (pid_m + 1) * BLOCK_M)
    for start in range(0, k_stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kv_offsets = bh * n_k * head_dim + cols[:, None] * head_dim + dims[None, :]
        kv_mask = (cols[:, None] < n_k) & (dims[None, :] < head_dim)
        k = tl.load(K + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_offsets, mask=kv_mask, other=0.0)
        visible = _visible(rows, cols, n_q, n_k, batch, KPM, CAUSAL, HAS_KPM)
        _, ds = _probs_and_score_grads(q, k, v, do, lse, delta, visible, scale, PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + q_offsets, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------------- launchers


def block_sizes(head_dim: int, with_tangent: bool) -> tuple[int, int]:
    """Default (BLOCK_M, BLOCK_N): smaller key blocks when three extra accumulators ride along."""
    if head_dim > 64 or with_tangent:
        return 64, 32
    return 64, 64


def _head_block(head_dim: int) -> int:
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton kernel supports head dims up to {MAX_HEAD_DIM}, got {head_dim}"
        )
    return max(16, triton.next_power_of_2(head_dim))


def _precision(dtype: torch.dtype) -> str:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton kernel takes float32, float16 or bfloat16, got {dtype}")
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is ignored for half inputs


def _flat(x: Tensor) -> Tensor:
    """(B, H, N, D) → contiguous (B·H, N, D)."""
    return x.reshape(-1, x.shape[2], x.shape[3]).contiguous()


def _padding(key_padding_mask: Tensor | None, like: Tensor) -> tuple[Tensor, bool]:
    if key_padding_mask is None:
        return like, False  # never read: HAS_KPM is False
    return key_padding_mask.to(torch.int8).contiguous(), True


def attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    tq: Tensor | None = None,
    tk: Tensor | None = None,
    tv: Tensor | None = None,
    *,
    scale: float,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """O, Ȯ (if tangents are given) and the float32 log-sum-exp, in one kernel launch.

    Shapes as :func:`flowrl.kernels.reference.blockwise_attention` (inputs already checked).
    """
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    with_tangent = tq is not None or tk is not None or tv is not None
    default_m, default_n = block_sizes(head_dim, with_tangent)
    block_m, block_n = block_m or default_m, block_n or default_n
    qf, kf, vf = _flat(q), _flat(k), _flat(v)
    if with_tangent:
        tqf, tkf, tvf = (
            _flat(t) if t is not None else torch.zeros_like(x)
            for t, x in ((tq, qf), (tk, kf), (tv, vf))
        )
    else:
        tqf, tkf, tvf = qf, kf, vf  # never read: HAS_TANGENT is False
    out = torch.empty_like(qf)
    out_dot = torch.empty_like(qf) if with_tangent else out
    lse = torch.empty(qf.shape[:2], device=q.device, dtype=torch.float32)
    kpm, has_kpm = _padding(key_padding_mask, qf)
    grid = (triton.cdiv(n_q, block_m), batch * heads)
    _forward_kernel[grid](
        qf,
        kf,
        vf,
        tqf,
        tkf,
        tvf,
        out,
        out_dot,
        lse,
        kpm,
        float(scale),
        n_q,
        n_k,
        heads,
        head_dim,
        HAS_TANGENT=with_tangent,
        CAUSAL=causal,
        HAS_KPM=has_kpm,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_head_block(head_dim),
        PRECISION=_precision(q.dtype),
    )
    shape = (batch, heads, n_q)
    return (
        out.view(q.shape),
        out_dot.view(q.shape) if with_tangent else None,
        lse.view(shape),
    )


def attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    grad_out: Tensor,
    *,
    scale: float,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of the attention output from the saved O and log-sum-exp."""
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    default_m, default_n = block_sizes(head_dim, with_tangent=False)
    block_m, block_n = block_m or default_m, block_n or default_n
    qf, kf, vf, dof = _flat(q), _flat(k), _flat(v), _flat(grad_out)
    # Δ_i = Σ_d dO_id O_id, the softmax-backward correction (one small reduction).
    delta = (dof.float() * _flat(out).float()).sum(dim=-1).contiguous()
    lsef = lse.reshape(batch * heads, n_q).float().contiguous()
    dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
    kpm, has_kpm = _padding(key_padding_mask, qf)
    common = dict(
        CAUSAL=causal,
        HAS_KPM=has_kpm,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_head_block(head_dim),
        PRECISION=_precision(q.dtype),
    )
    _backward_kv_kernel[(triton.cdiv(n_k, block_n), batch * heads)](
        qf, kf, vf, dof, lsef, delta, dk, dv, kpm, float(scale), n_q, n_k, heads, head_dim,
        **common,
    )  # fmt: skip
    _backward_q_kernel[(triton.cdiv(n_q, block_m), batch * heads)](
        qf, kf, vf, dof, lsef, delta, dq, kpm, float(scale), n_q, n_k, heads, head_dim,
        **common,
    )  # fmt: skip
    return dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)
