"""MJX bridge throughput: env steps/s of the bridge vs raw jitted MJX vs gymnasium, one run.

For each batch size N it times, on the same task and random actions:

- ``raw``: ``jax.jit(jax.vmap(task.step))`` alone (no reset, no host transfer), blocking on
  each step's observation: the ceiling the bridge is measured against;
- ``bridge_torch``: :class:`~flowrl.envs.mjx.MJXVecEnv`'s torch face (DLPack both ways),
  auto-reset and time limit included; ``bridge_torch_numpy`` the same through numpy copies;
- ``bridge_vecenv``: its SB3 ``VecEnv`` face (numpy arrays and info dicts);
- ``gym_sync``: gymnasium's ``SyncVectorEnv`` of the classic MuJoCo task (N envs, one
  process), and ``gym_async``: ``AsyncVectorEnv`` (N processes, only for N ≤ --async-max).

Compile time is reported apart and not timed. Target: the bridge costs ≤ 10 % over raw at
N ≥ 256. Writes JSON and a markdown table (``results/mjx_bridge.{json,md}``).

    python experiments/benchmarks/mjx_bridge.py [--task Hopper] [--sizes 1,16,256,1024]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import torch
from common import code_version, machine_info, write_results

from flowrl.envs.mjx import MJXVecEnv, enable_compile_cache, make_task


def best_rates(paths: dict[str, tuple[Callable, Callable]], steps: int, repeats: int):
    """Best-of-``repeats`` batch steps/s of each path.

    The paths are interleaved in every repeat, so drifts of the machine's speed hit them
    alike, not the ones measured first.

    Args:
        paths: name -> (start, step_once); ``start`` resets, ``step_once`` takes one step.
        steps: Timed calls of ``step_once`` per repeat.
        repeats: Repeats per path (the best counts).
    """
    best = dict.fromkeys(paths, 0.0)
    for _, (start, step_once) in paths.items():
        start()
        step_once()  # warm-up: anything left to compile or allocate is not timed
    for _ in range(repeats):
        for name, (start, step_once) in paths.items():
            start()
            t0 = time.perf_counter()
            for _ in range(steps):
                step_once()
            best[name] = max(best[name], steps / (time.perf_counter() - t0))
    return best


def measure(task, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Steps/s (× N envs) of each path for one batch size."""
    rng = np.random.default_rng(0)
    low, high = task.action_low, task.action_high
    actions_np = rng.uniform(low, high, (n, task.action_size)).astype(np.float32)
    actions_t = torch.from_numpy(actions_np)
    steps = max(args.min_steps, args.env_steps // n)
    out: dict[str, Any] = {"n": n, "timed_batch_steps": steps}

    # raw jitted vmap(step): no reset, no transfer; blocks on each step's observation
    t0 = time.perf_counter()
    raw_step = jax.jit(jax.vmap(task.step))
    first = jax.jit(jax.vmap(task.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    actions_j = jnp.asarray(actions_np)
    raw_step(first, actions_j).obs.block_until_ready()
    out["compile_s_raw"] = time.perf_counter() - t0
    holder = [first]

    def raw_once():
        holder[0] = raw_step(holder[0], actions_j)
        holder[0].obs.block_until_ready()

    t0 = time.perf_counter()
    env = MJXVecEnv(task, n, seed=0)
    env.reset()
    env.step(actions_np)
    out["compile_s_bridge"] = time.perf_counter() - t0

    def torch_start(transfer):
        def start():
            env.transfer = transfer
            env.torch.reset()

        return start

    paths = {
        "raw": (lambda: holder.__setitem__(0, first), raw_once),
        "bridge_torch": (torch_start("dlpack"), lambda: env.torch.step(actions_t)),
        "bridge_torch_numpy": (torch_start("numpy"), lambda: env.torch.step(actions_t)),
        "bridge_vecenv": (env.reset, lambda: env.step(actions_np)),
    }
    rates = best_rates(paths, steps, args.repeats)

    # gymnasium's classic MuJoCo, vectorized
    fns = [lambda: gym.make(task.gym_id) for _ in range(n)]
    kinds = [("gym_sync", lambda: gym.vector.SyncVectorEnv(fns))]
    if n <= args.async_max:
        # spawn, not fork: this process runs JAX's threads, and a forked child may deadlock.
        kinds.append(("gym_async", lambda: gym.vector.AsyncVectorEnv(fns, context="spawn")))
    gym_steps = max(args.min_steps, args.gym_env_steps // n)
    for name, make in kinds:
        venv = make()
        start = lambda venv=venv: venv.reset(seed=0)  # noqa: E731
        step_once = lambda venv=venv: venv.step(actions_np)  # noqa: E731
        rates.update(best_rates({name: (start, step_once)}, gym_steps, args.repeats))
        venv.close()

    out["env_steps_per_s"] = {k: v * n for k, v in rates.items()}
    out["bridge_overhead_vs_raw"] = {
        k: rates["raw"] / rates[k] - 1.0 for k in ("bridge_torch", "bridge_vecenv")
    }
    print(n, {k: round(v) for k, v in out["env_steps_per_s"].items()}, flush=True)
    return out


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per batch size."""
    s = result["settings"]
    cols = ["raw", "bridge_torch", "bridge_torch_numpy", "bridge_vecenv", "gym_sync", "gym_async"]
    lines = [
        f"Env steps/s on {s['task']} (MJX float32 on the CPU vs classic MuJoCo), random actions, "
        f"best of {s['repeats']}; overhead = raw/bridge − 1.",
        "",
        "| N | " + " | ".join(cols) + " | torch-face overhead | VecEnv overhead | compile (s) |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for r in result["sizes"]:
        rate = r["env_steps_per_s"]
        cells = [f"{rate[c]:.0f}" if c in rate else "–" for c in cols]
        over = r["bridge_overhead_vs_raw"]
        lines.append(
            f"| {r['n']} | " + " | ".join(cells) + f" | {100 * over['bridge_torch']:+.1f} % "
            f"| {100 * over['bridge_vecenv']:+.1f} % "
            f"| {r['compile_s_raw']:.0f} + {r['compile_s_bridge']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="Hopper")
    parser.add_argument("--sizes", default="1,16,256,1024")
    parser.add_argument("--env-steps", type=int, default=20_000, help="timed env steps per path")
    parser.add_argument("--gym-env-steps", type=int, default=20_000)
    parser.add_argument("--min-steps", type=int, default=10, help="at least this many batch steps")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per path")
    parser.add_argument("--async-max", type=int, default=16, help="largest N for AsyncVectorEnv")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "mjx_bridge.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    enable_compile_cache()
    task = make_task(args.task)
    sizes = [int(x) for x in args.sizes.split(",")]
    result: dict[str, Any] = {
        "machine": machine_info(("jax", "jaxlib", "mujoco", "mujoco-mjx", "gymnasium")),
        "jax_devices": [str(d) for d in jax.devices()],
        "code": code_version(("flowrl", "envs")),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sizes": [measure(task, n, args) for n in sizes],
    }
    text = table(result)
    write_results(result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
