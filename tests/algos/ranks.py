"""Run a function on N local CPU ranks of a gloo process group, for the data-parallel tests.

What ``torchrun`` does for a real run, reduced to a test's needs: N spawned processes with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set, each joining the group through
:func:`flowrl.distributed.init`, running ``fn(rank, *args)`` with one torch thread, and
sending back its result (or its traceback). The parent waits at most ``timeout_s`` and kills
whatever is left, so a hang fails the test instead of stalling the suite.

``fn`` must be importable by name (a module-level function of a test module or helper).
Also :class:`StopAt`, a callback the tests use to stop training from rank 0.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import socket
import time
import traceback
from typing import Any

import torch.multiprocessing as mp
from stable_baselines3.common.callbacks import BaseCallback


def free_port() -> int:
    """A TCP port nobody listens on now (the group's rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, rank: int, world: int, port: int, timeout_s: float, results, args) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import flowrl.distributed as fd

    try:
        fd.init(backend="gloo", timeout_s=timeout_s, threads=1)
        out = fn(rank, *args)
        # Plain bytes: tensors put on the queue as they are would travel through shared
        # memory handles that die with this process.
        results.put((rank, "ok", pickle.dumps(out)))
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        results.put((rank, "error", (type(err).__name__, str(err), traceback.format_exc())))
    finally:
        with contextlib.suppress(Exception):
            fd.shutdown()


def run_ranks(
    fn,
    world: int = 2,
    *args: Any,
    timeout_s: float = 120.0,
    group_timeout_s: float = 60.0,
) -> dict[int, tuple[str, Any]]:
    """``{rank: ("ok", result) or ("error", (type, message, traceback))}`` of every rank.

    Ranks that neither report nor exit within ``timeout_s`` are killed and reported as
    ``("timeout", None)``; a rank that died without reporting as ``("died", exitcode)``.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(fn, r, world, port, group_timeout_s, results, args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < world and time.monotonic() < deadline:
        try:
            r, status, value = results.get(timeout=0.2)
            out[r] = (status, pickle.loads(value) if status == "ok" else value)
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    for r, p in enumerate(procs):
        p.join(timeout=max(0.0, deadline - time.monotonic()) if r not in out else 10)
        if p.is_alive():
            p.kill()
            p.join()
            out.setdefault(r, ("timeout", None))
        out.setdefault(r, ("died", p.exitcode))
    return out


def ok_results(out: dict[int, tuple[str, Any]]) -> list[Any]:
    """The ranks' results in rank order; raises with every failing rank's traceback."""
    failed = {r: v for r, v in out.items() if v[0] != "ok"}
    if failed:
        lines = []
        for r, (status, value) in sorted(failed.items()):
            detail = value[2] if status == "error" else value
            lines.append(f"rank {r}: {status}\n{detail}")
        raise AssertionError("\n".join(lines))
    return [out[r][1] for r in sorted(out)]


class StopAt(BaseCallback):
    """A callback that asks to stop training at its n-th step (on the rank it runs on)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def _on_step(self) -> bool:
        return self.n_calls < self.n
