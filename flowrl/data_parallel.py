"""What FlowBC and the generator trainers share to run data-parallel under ``torchrun``.

Built on :mod:`flowrl.distributed` (the process group, :class:`~flowrl.distributed.
GradientSync`); every function here is a plain single-process call without a group:

* :func:`rank_stream_seed`: the seed of one of this rank's RNG streams (batches, times,
  noise). Rank 0 keeps the single-process seed; the others get seeds hashed from
  (seed, rank, step), so their draws differ from rank 0's, from each other's and from any
  other run's, and a run resumed at step s reseeds them from s.
* :func:`synced_guarded_step`: :func:`~flowrl.optim.guarded_step` whose gradients are
  averaged over the ranks before clipping, in one all-reduce that also carries the step's
  decisions (a non-finite loss on any rank, a Ctrl-C on any rank) and its logged scalars.
* :func:`stop_between_steps`, :func:`stop_at_end`: a Ctrl-C or SIGTERM that reached some
  ranks stops every rank after the same step.
* :func:`rank_zero`: the Hydra resolver that keeps ranks > 0 from writing Hydra's own
  files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from flowrl import distributed
from flowrl.optim import guarded_step

__all__ = [
    "rank_zero",
    "rank_stream_seed",
    "stop_at_end",
    "stop_between_steps",
    "synced_guarded_step",
]


def rank_stream_seed(seed: int, step: int = 0) -> int:
    """The seed of this rank's copy of an RNG stream whose single-process seed is ``seed``.

    Rank 0 (and a single process) gets ``seed`` itself, so a single-process run is unchanged
    and rank 0 of a data-parallel run draws what one process would. Rank r > 0 gets a 63-bit
    hash of (seed, r, step): distinct across ranks and from any plain seed a run uses (not
    ``seed + r``, which is rank 0's seed of the run with seed ``seed + r``).

    Args:
        seed: The stream's seed in a single process (e.g. ``config.seed``).
        step: The step the stream starts at: 0 for a new run, the checkpoint's step for a
            resumed one (rank 0 restores its saved stream instead; the others' streams are
            not saved and restart from this seed).
    """
    r = distributed.rank()
    if r == 0:
        return int(seed)
    entropy = [int(seed) & (2**64 - 1), r, int(step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


def synced_guarded_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[nn.Parameter],
    grad_clip: float | None,
    *,
    what: str,
    step: int,
    hint: str,
    scalars: Sequence[float] = (),
    stop: bool = False,
) -> tuple[float, list[float], bool]:
    """Backward, average the gradients over ranks, clip and step; refuse a non-finite loss.

    In a single process this is :func:`~flowrl.optim.guarded_step`. Under ``torchrun`` every
    rank backpropagates its own loss (a mean over its share of the global batch), then one
    all-reduce averages the gradients, so every rank clips and applies the gradient of the
    global batch's mean loss, and the copies of the model stay bit-identical. The same
    all-reduce counts the ranks whose loss is not finite (then no rank applies the step and
    every rank raises), the ranks asked to stop (``stop``), and averages ``scalars``.

    Args:
        loss: This rank's scalar loss with its graph.
        optimizer: The optimizer of ``params``.
        params: Parameters trained by the step, in one order shared by every rank.
        grad_clip: Max gradient norm (of the averaged gradient); None or 0: no clipping.
        what: Name of the loss for the error message.
        step: Current step, for the error message.
        hint: What the user should check, appended to the error message.
        scalars: Numbers of this rank's step to average over ranks (the logged losses).
        stop: Whether this rank was asked to stop (a deferred Ctrl-C or SIGTERM).

    Returns:
        (gradient norm before clipping, ``scalars`` averaged over ranks, whether any rank
        asked to stop). In a single process: ``scalars`` and ``stop`` as given.

    Raises:
        FloatingPointError: On every rank, if the loss is not finite on any rank; parameters
            and optimizer states are left untouched on every rank.
    """
    params = list(params)
    if not distributed.is_distributed():
        grad_norm = guarded_step(
            loss, optimizer, params, grad_clip, what=what, step=step, hint=hint
        )
        return grad_norm, [float(s) for s in scalars], stop
    finite = bool(torch.isfinite(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    if finite:
        loss.backward()
    sync = distributed.GradientSync(params)
    out = sync(
        [float(not finite), float(stop), *(float(s) for s in scalars)],
        what=f"averaging the {what} gradients",
    )
    bad = int(out[0])
    if bad:
        optimizer.zero_grad(set_to_none=True)
        mine = f"this rank's loss is {loss.item()}" if not finite else "this rank's is finite"
        raise FloatingPointError(
            f"{what} loss is not finite on {bad} of {distributed.world_size()} ranks at step "
            f"{step} ({mine}); the update was not applied on any rank. {hint}"
        )
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    optimizer.step()
    means = (out[2:] / distributed.world_size()).tolist()
    return float(grad_norm), means, bool(out[1] > 0)


class _Interrupts(Protocol):
    requested: bool

    def raise_if_requested(self) -> None: ...


def stop_between_steps(interrupts: _Interrupts, agreed: bool) -> None:
    """Raise KeyboardInterrupt between two steps if the run must stop.

    In a single process: if a signal came (``interrupts.requested``). Under ``torchrun``:
    only on the ranks' agreed decision (``agreed``, from the stop flag of the last step's
    all-reduce), on every rank alike, also one the signal did not reach; a signal that came
    after the last all-reduce waits for the next step's, so no rank leaves the loop a step
    before the others (which would wait for it in a collective).

    Args:
        interrupts: A :class:`~flowrl.checkpoints.DeferredInterrupt` entered by the loop.
        agreed: Whether any rank had asked to stop at the last step's all-reduce.
    """
    if distributed.is_distributed():
        if not agreed:
            return
        interrupts.requested = True
    interrupts.raise_if_requested()


def stop_at_end(interrupts: _Interrupts) -> None:
    """At the end of a loop: raise KeyboardInterrupt (on every rank) if a signal came.

    Under ``torchrun`` one collective decides: if the signal reached any rank, every rank
    raises, so the ranks of a pipeline leave it together.
    """
    if distributed.is_distributed() and distributed.agree(
        interrupts.requested, "agreeing whether to stop"
    ):
        interrupts.requested = True
    interrupts.raise_if_requested()


def rank_zero(value: object, other: object = None) -> object:
    """``value`` in rank 0 (or a plain run), ``other`` in the other ranks of a torchrun job.

    The ``rank_zero`` resolver of the pipeline's Hydra configs (each script registers it):
    ``hydra.output_subdir: ${rank_zero:.hydra}`` and the job log's file name keep Hydra's own
    files to rank 0. ``RANK`` is read because torchrun sets it before the process starts,
    before Hydra composes the config.
    """
    return value if int(os.environ.get("RANK", "0")) == 0 else other
