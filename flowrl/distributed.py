"""Data-parallel training on PyTorch's own engine: ``torch.distributed``, launched by ``torchrun``.

One process per device (rank), each with its own envs and its own copy of the networks;
gradients are averaged across ranks before every optimizer step, so the copies stay
bit-identical. flowrl adds no process management of its own: ``torchrun`` starts the
processes and describes the group in environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), :func:`init` joins it, and the learners
(:class:`~flowrl.algos.on_policy.OnPolicyCore`, the replay-buffer learners, ``FlowBC``, the
generators' trainer) read the group from here: nothing in their API changes.

Everything here is a no-op in a single process (no group initialized): ``world_size() == 1``,
``is_main()`` is True and every reduction returns its input.

Gradients are averaged by one explicit all-reduce of a flat buffer per optimizer step (as
rsl_rl does) rather than by wrapping modules in ``DistributedDataParallel``: flowrl's losses
call many policy methods (chain scoring, compiled paths, the value net), not one ``forward``;
the actor and critic have separate optimizers and the critic steps when the actor does not
(critic warm-up, the KL stop); and a plain module keeps checkpoints identical to a
single-process run's. The same all-reduce carries the collective decisions of the step (the
NaN refusal, the KL stop), so agreeing costs no extra round trip.

Every collective names what it was doing; a peer that dies or hangs turns into a
:class:`DistributedError` on every other rank within the group's timeout
(:data:`DEFAULT_TIMEOUT_S`, or ``FLOWRL_DIST_TIMEOUT_S``), never a silent hang.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "GradientSync",
    "agree",
    "all_reduce",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "check_in_sync",
    "check_same",
    "comm_seconds",
    "device_for_rank",
    "init",
    "is_distributed",
    "is_main",
    "joined",
    "local_rank",
    "merge_running_stats",
    "on_main",
    "rank",
    "rank_seed",
    "share_vec_normalize",
    "share",
    "shutdown",
    "sync_vec_normalize",
    "world_size",
]

#: Seconds a collective waits for the other ranks before failing (torch's default too):
#: long enough for rank 0's evaluations and checkpoints, which the other ranks wait out.
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(RuntimeError):
    """A collective failed: a peer rank died, hung past the timeout, or disagreed."""


_alone = 0  # > 0 while rank 0 runs on_main's function: it then works as a single process


def _grouped() -> bool:
    return _alone == 0 and dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialized (and in use)."""
    return _grouped() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a group)."""
    return dist.get_rank() if _grouped() else 0


def world_size() -> int:
    """Number of ranks (1 without a group)."""
    return dist.get_world_size() if _grouped() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files, logs and evaluates."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_seed(seed: int | None, stride: int = 1) -> int | None:
    """``seed`` offset by this rank: ``seed + rank * stride`` (None stays None).

    With ``stride`` = envs per rank, rank r's envs get seeds ``seed + r·E …``, so two ranks of
    E envs seed the same envs as one process of 2E envs.
    """
    return None if seed is None else int(seed) + rank() * int(stride)


def share(total: int, name: str = "batch_size", what: str = "rows") -> int:
    """This rank's equal share of a count of all ranks together (``total`` in one process).

    Every global count a data-parallel run splits (a minibatch, the envs) goes through here.

    Args:
        total: The global count.
        name: Its setting's name, for the error.
        what: What each rank takes a share of, for the error.

    Raises:
        ValueError: On every rank (each checks the same numbers) if the world size does not
            divide ``total``.
    """
    world = world_size()
    if total % world:
        raise ValueError(
            f"{name}={total} counts all ranks together and is not divisible by the world size "
            f"{world}: each rank takes an equal share of the {what}. Choose a multiple of "
            f"{world}."
        )
    return total // world


def device_for_rank(device: torch.device | str = "auto") -> torch.device:
    """The device of this rank: CUDA device ``LOCAL_RANK`` for "auto"/"cuda", else ``device``."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device)
    if device == torch.device("auto"):
        device = torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    return device


def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is None:
        timeout_s = float(os.environ.get("FLOWRL_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    return timeout_s


def init(
    backend: str | None = None,
    timeout_s: float | None = None,
    threads: int | None = None,
) -> bool:
    """Join the process group that ``torchrun`` describes; False when not launched by it.

    Safe to call twice and in a plain ``python`` process (returns False, changes nothing).

    Args:
        backend: "gloo" or "nccl"; None: NCCL when CUDA is available, else gloo.
        timeout_s: Seconds a collective waits for the other ranks (None:
            ``FLOWRL_DIST_TIMEOUT_S`` or :data:`DEFAULT_TIMEOUT_S`).
        threads: Torch CPU threads of this rank; None: the machine's cores divided among the
            ranks on it (``LOCAL_WORLD_SIZE``), at least 1. Two ranks on two cores each get 1,
            instead of both using every core and slowing each other down.

    Returns:
        True if this process is now one rank of a group (possibly of size 1).

    Raises:
        ValueError: For an unknown backend, or NCCL without CUDA.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if not dist.is_available():
        raise DistributedError(
            "torchrun started this process, but torch.distributed is unavailable"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
        torch.cuda.set_device(local_rank())
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(local_world, 1))
    torch.set_num_threads(int(threads))
    dist.init_process_group(backend, timeout=timedelta(seconds=_timeout_s(timeout_s)))
    return True


@contextmanager
def joined(
    backend: str | None = None, timeout_s: float | None = None, threads: int | None = None
) -> Iterator[bool]:
    """Be one rank of torchrun's group for the block (:func:`init`, then :func:`shutdown`).

    Leaves only a group it joined itself: inside an already joined group (a caller's, a
    test's) it changes nothing. Yields whether this process is a rank of a group.
    """
    mine = not (dist.is_available() and dist.is_initialized()) and init(
        backend=backend, timeout_s=timeout_s, threads=threads
    )
    try:
        yield mine or (dist.is_available() and dist.is_initialized())
    finally:
        if mine:
            shutdown()


def shutdown() -> None:
    """Leave the process group (if any), once every rank has come to leave it."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _fail(what: str, err: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {rank()} of {world_size()}: {what} failed: another rank stopped (crashed, was "
        f"killed, or raised an error) or did not arrive within the group's timeout. The first "
        f"error is in the log of the rank that stopped. ({type(err).__name__}: {err})"
    )


_comm_seconds = 0.0  # wall time spent inside collectives (waiting for other ranks included)


def comm_seconds() -> float:
    """Seconds this process has spent in flowrl's collectives (waits for slower ranks too).

    Every collective of flowrl goes through this module, so this is the data-parallel
    overhead a profile would attribute to communication (benchmarks read it).
    """
    return _comm_seconds


def _collective(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one torch.distributed collective: timed, its failure named (:func:`_fail`)."""
    global _comm_seconds
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as err:  # gloo/NCCL failures
        raise _fail(what, err) from err
    finally:
        _comm_seconds += time.perf_counter() - start


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(values: Tensor | Sequence[float], op: str = "sum", what: str = "a reduction"):
    """Reduce ``values`` over all ranks (``"sum"``, ``"mean"``, ``"max"`` or ``"min"``).

    Returns a new float64 CPU tensor (the input unchanged in a single process, as float64).
    """
    data = torch.as_tensor(values, dtype=torch.float64).detach().cpu().clone()
    if not is_distributed():
        return data
    if op not in (*_OPS, "mean"):
        raise ValueError(f"op must be one of sum, mean, max, min; got {op!r}")
    buffer = data.to(_comm_device())
    _collective(what, dist.all_reduce, buffer, op=getattr(dist.ReduceOp, _OPS.get(op, "SUM")))
    data = buffer.cpu()
    return data / world_size() if op == "mean" else data


def agree(flag: bool, what: str = "an agreement") -> bool:
    """True on every rank if ``flag`` is True on any rank (a collective decision)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce([float(bool(flag))], "max", what)[0] > 0)


def barrier(what: str = "a barrier") -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        all_reduce([0.0], "sum", what)


def broadcast_object(obj: Any, src: int = 0, what: str = "a broadcast") -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled: only objects the ranks themselves made)."""
    if not is_distributed():
        return obj
    box = [obj]
    _collective(what, dist.broadcast_object_list, box, src=src, device=_comm_device())
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0, what: str = "the weights") -> None:
    """Copy rank ``src``'s parameters and floating buffers into ``module`` on every rank."""
    if not is_distributed():
        return
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel()]
    if not tensors:
        return
    with torch.no_grad():
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1).to(_comm_device()) for t in group])
            _collective(f"broadcasting {what}", dist.broadcast, flat, src=src)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def check_same(what: str, value: Any) -> None:
    """Raise on every rank unless ``value`` (picklable, comparable) is equal on all ranks.

    For settings that must match for the ranks' loops to meet (rollout and batch sizes).

    Raises:
        DistributedError: Naming each rank's value.
    """
    if not is_distributed():
        return
    values: list[Any] = [None] * world_size()
    _collective(f"comparing {what}", dist.all_gather_object, values, value)
    if any(v != values[0] for v in values):
        listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise DistributedError(f"{what} must be the same on every rank, got {listed}")


def check_in_sync(module: torch.nn.Module, what: str = "the weights") -> None:
    """Raise on every rank unless ``module``'s parameters are bit-identical across ranks.

    One small all-reduce: each parameter's float64 sum and sum of squares, max and min.

    Raises:
        DistributedError: If the copies diverged (e.g. a callback changed rank 0's only).
    """
    if not is_distributed():
        return
    with torch.no_grad():
        stats = torch.stack(
            [s for p in module.parameters() for s in (p.double().sum(), p.double().square().sum())]
        ).cpu()
    both = all_reduce(torch.cat([stats, -stats]), "max", f"checking that {what} agree")
    if not torch.equal(both[: len(stats)], -both[len(stats) :]):
        raise DistributedError(
            f"{what} differ between ranks: something changed one rank's copy only (a callback "
            "or user code that edits the model on rank 0 alone?). Every rank must apply the "
            "same changes."
        )


class GradientSync:
    """Average the gradients of fixed parameters over ranks, with a step's decisions.

    One all-reduce of a flat buffer in the parameters' dtype (float32 for float32 networks:
    half the bytes of float64; float64 if the dtypes are mixed): every gradient (zeros where
    None), one has-gradient count per parameter, then the caller's scalars (e.g. "loss was
    not finite", the approximate KL). After :meth:`__call__` every rank holds the same
    averaged gradients (None where no rank had one) and the same summed scalars: an
    all-reduce computes each element's sum once and sends it to every rank.

    Args:
        params: The parameters, in one order shared by every rank.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]
        dtypes = {p.dtype for p in self.params}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64

    def __call__(self, scalars: Sequence[float] = (), what: str = "averaging gradients"):
        """Average the gradients in place; return the scalars summed over ranks (float64)."""
        if not is_distributed():
            return torch.as_tensor(list(scalars), dtype=torch.float64)
        device = _comm_device()
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
            for p in self.params
        ]
        has = torch.tensor([float(p.grad is not None) for p in self.params], dtype=self.dtype)
        extra = torch.as_tensor(list(scalars), dtype=self.dtype)
        flat = torch.cat([*(g.to(device) for g in grads), has.to(device), extra.to(device)])
        _collective(what, dist.all_reduce, flat)
        flat = flat.cpu() if device.type != "cpu" else flat
        counts = flat[-len(extra) - len(self.params) : len(flat) - len(extra)]
        offset = 0
        scale = 1.0 / world_size()
        with torch.no_grad():
            for p, count in zip(self.params, counts.tolist(), strict=True):
                n = p.numel()
                if count > 0:
                    mean = (flat[offset : offset + n] * scale).view_as(p).to(p.device, p.dtype)
                    if p.grad is None:
                        p.grad = mean
                    else:
                        p.grad.copy_(mean)
                offset += n
        return flat[len(flat) - len(extra) :].double().clone()


def merge_running_stats(stats: Any, snapshot: Any, what: str) -> None:
    """Merge SB3 ``RunningMeanStd`` statistics across ranks, in place (the same on all ranks).

    ``snapshot`` holds the (mean, var, count) every rank agreed on at the last merge; each
    rank's data since then is its statistics minus the snapshot, in raw moments (count,
    Σx, Σx²), which add. The result is what one process would have from all ranks' data.
    """
    raw = lambda mean, var, n: (n, n * mean, n * (var + mean**2))  # noqa: E731
    mean0, var0, n0 = (np.asarray(x, dtype=np.float64) for x in snapshot)
    base = raw(mean0, var0, n0)
    mine = raw(np.asarray(stats.mean, np.float64), np.asarray(stats.var, np.float64), stats.count)
    shape = np.shape(mean0)
    delta = np.concatenate([np.ravel(m - b) for m, b in zip(mine, base, strict=True)])
    total = all_reduce(delta, "sum", what).numpy()
    size = int(np.prod(shape)) if shape else 1
    dn, ds, dq = total[:1], total[1 : 1 + size], total[1 + size :]
    n = float(n0 + dn[0])
    s = np.ravel(base[1]) + ds
    q = np.ravel(base[2]) + dq
    mean = s / n
    var = np.maximum(q / n - mean**2, 0.0)
    stats.mean = mean.reshape(shape).astype(np.float64)
    stats.var = var.reshape(shape).astype(np.float64)
    stats.count = n


def _rms_items(venv: Any) -> list[tuple[str, Any]]:
    """The running statistics of a ``VecNormalize``: obs (one per key of a dict) and return."""
    items: list[tuple[str, Any]] = []
    if getattr(venv, "norm_obs", False):
        obs = venv.obs_rms
        items += sorted(obs.items()) if isinstance(obs, dict) else [("obs", obs)]
    if getattr(venv, "norm_reward", False):
        items.append(("return", venv.ret_rms))
    return items


def share_vec_normalize(venv: Any) -> None:
    """Start every rank's ``VecNormalize`` from rank 0's statistics (before training).

    Records them as the agreed snapshot that :func:`sync_vec_normalize` merges from.
    A no-op for None and in a single process.
    """
    if venv is None or not is_distributed():
        return
    items = _rms_items(venv)
    state = broadcast_object(
        [(k, (s.mean, s.var, s.count)) for k, s in items], what="VecNormalize statistics"
    )
    for (_, stats), (_, (mean, var, count)) in zip(items, state, strict=True):
        stats.mean, stats.var, stats.count = np.copy(mean), np.copy(var), float(count)
    venv._flowrl_rms_snapshot = [(np.copy(m), np.copy(v), float(c)) for _, (m, v, c) in state]


def sync_vec_normalize(venv: Any) -> None:
    """Merge the ranks' ``VecNormalize`` statistics gathered since the last merge.

    After it every rank normalizes with the statistics one process would have from all
    ranks' observations and returns. Call it at the same point on every rank (the on-policy
    core: after each rollout; the replay learners: before each gradient phase).
    A no-op for None and in a single process.
    """
    if venv is None or not is_distributed():
        return
    snapshot = getattr(venv, "_flowrl_rms_snapshot", None)
    if snapshot is None:
        raise DistributedError("sync_vec_normalize before share_vec_normalize")
    items = _rms_items(venv)
    for (name, stats), snap in zip(items, snapshot, strict=True):
        merge_running_stats(stats, snap, f"merging VecNormalize {name} statistics")
    venv._flowrl_rms_snapshot = [
        (np.copy(s.mean), np.copy(s.var), float(s.count)) for _, s in items
    ]


def on_main(fn: Any, what: str) -> Any:
    """``fn()`` run by rank 0 alone; its result, or its exception, on every rank.

    For work that reads or writes the outside world once (a finished run's results, a
    checkpoint to resume, a pretraining stage): the other ranks wait (up to the group's
    timeout) and then all return the same result or raise the same error. Inside ``fn``
    rank 0 works as a single process (:func:`is_distributed` is False, :func:`world_size`
    1), so a learner or trainer built there trains alone and makes no collective calls.
    """
    global _alone
    if not is_distributed():
        return fn()
    result = error = None
    if is_main():
        _alone += 1
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 (shared with every rank, then raised)
            error = err
        finally:
            _alone -= 1
        try:
            pickle.dumps((result, error))
        except Exception:  # noqa: BLE001
            if error is None:
                raise
            error = DistributedError(f"{type(error).__name__}: {error}")
    result, error = broadcast_object((result, error), what=what)
    if error is not None:
        raise error
    return result
