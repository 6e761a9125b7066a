"""Data-parallel scaling: ReinFlow's and FlowSAC's env steps per second on 1 and 2 ranks.

The run is the ``recipe`` setting of ``throughput.py`` (Hopper-v5, width 128, batch 512,
5 epochs, 4 envs × 512 steps per rollout; no KL stop, so every update runs every epoch), at
W ranks in two ways (``--modes``):

* ``weak``: every rank runs the recipe's 4 envs and 512 rows of each minibatch (the global
  batch is 512·W, the rollout 4·W envs × 512 steps): adding a rank adds its envs, as
  rsl_rl-style GPU training scales. Ideal: W times the env steps per second.
* ``strong``: the recipe's run split as ``experiments/train.py`` splits it under torchrun:
  W ranks step 4/W envs each and take 512/W rows of every minibatch, so the algorithm is the
  one-process recipe's at every W. Ideal: W times too, if a rank's time shrinks with its
  share of the envs and rows.

FlowSAC (``--learners``) runs ``flowsac_throughput.py``'s sizes (Hopper-v5, width 256, K = 4,
batch 256, one gradient step per vectorized env step) with 2 envs in the one-process run:
``weak`` gives every rank 2 envs and 256 rows, ``strong`` splits the 2 envs and 256 rows. It
is timed over 500 vectorized steps after its replay buffer passed ``learning_starts``; its
"rollout" column is everything but ``train``.

Each measurement is its own ``torchrun --standalone --nproc_per_node=W`` job (one torch thread
per rank, gloo): an untimed warm-up ``learn`` of one rollout and update, then a timed
``learn`` of ``--rollouts`` rollouts and updates. Every rank times its rollouts, updates and
the time it spends inside collectives (``flowrl.distributed.comm_seconds``: the gradient
all-reduce, the advantage statistics, the agreement after each rollout, the weight check after
each update, waits for the slower rank included); rank 0 gathers them. Jobs alternate 1, 2,
2, 1, … ranks over ``--repeats``. A job whose ranks all finished but one then exited with an
error keeps its measurement, with the exit status recorded (``exit_status``).

Run from the repository root on an otherwise idle machine::

    .venv/bin/python experiments/benchmarks/distributed.py            # ~6 minutes
    .venv/bin/python experiments/benchmarks/distributed.py --quick    # smoke run

Writes ``experiments/benchmarks/results/distributed.json`` (``--out``) and the markdown table
next to it (``.md``), also printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from common import code_version, machine_info, write_results

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "distributed.json"
# FlowSAC (--learner flowsac): flowsac_throughput.py's sizes, 2 envs in the one-process run.
FLOWSAC = {
    "n_envs": 2,
    "batch_size": 256,
    "width": 256,
    "learning_starts": 1000,
    "timed_steps": 500,  # vectorized steps of each rank's envs, timed
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,2", help="rank counts to measure")
    parser.add_argument("--modes", default="weak,strong", help="weak and/or strong scaling")
    parser.add_argument("--mode", default="weak", help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--learners", default="reinflow,flowsac", help="reinflow and/or flowsac")
    parser.add_argument("--learner", default="reinflow", help=argparse.SUPPRESS)  # a worker's
    parser.add_argument("--repeats", type=int, default=3, help="jobs per rank count")
    parser.add_argument("--rollouts", type=int, default=4, help="timed rollouts+updates per job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny Pendulum smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _flowsac_worker(args: argparse.Namespace) -> dict[str, Any]:
    """FlowSAC at ``flowsac_throughput.py``'s sizes: this rank's timed run."""
    from stable_baselines3.common.env_util import make_vec_env

    import flowrl.distributed as fd
    from flowrl.algos import FlowSAC

    world = fd.world_size()
    n_envs, batch = FLOWSAC["n_envs"], FLOWSAC["batch_size"]
    if args.mode == "weak":  # each rank: the envs and minibatch rows of the one-process run
        batch *= world
    else:  # the one-process run split among the ranks
        n_envs = fd.share(n_envs, "n_envs", "envs")
    width = FLOWSAC["width"] if not args.quick else 32
    env = make_vec_env(
        "Pendulum-v1" if args.quick else "Hopper-v5",
        n_envs=n_envs,
        seed=fd.rank_seed(args.seed, n_envs),
    )
    model = FlowSAC(
        "FlowSACPolicy",
        env,
        policy_kwargs={
            "actor_config": {"width": width, "depth": 1, "act": "relu"},
            "num_steps": 4,
            "value_hidden": (width, width),
            "value_act": "relu",
            "noise_hidden": (64, 64),
        },
        batch_size=batch,
        learning_starts=FLOWSAC["learning_starts"],
        train_freq=1,
        gradient_steps=1,
        seed=args.seed,
    )
    train_s = [0.0]
    train = model.train

    def timed_train(*a: Any, **k: Any) -> None:
        start = time.perf_counter()
        train(*a, **k)
        train_s[0] += time.perf_counter() - start

    model.train = timed_train  # type: ignore[method-assign]
    model.learn(FLOWSAC["learning_starts"] + 200, progress_bar=False)  # fill, first steps
    train_s[0] = 0.0
    fd.barrier("the start of the timed run")
    comm0 = fd.comm_seconds()
    steps0 = model.num_timesteps
    wall0, cpu0 = time.perf_counter(), time.process_time()
    total = (200 if args.quick else FLOWSAC["timed_steps"]) * n_envs * world
    model.learn(total, reset_num_timesteps=False, progress_bar=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "rank": fd.rank(),
        "wall_s": wall,
        "cpu_s": cpu,
        "rollout_s": wall - train_s[0],
        "env_step_s": float("nan"),
        "train_s": train_s[0],
        "comm_s": fd.comm_seconds() - comm0,
        "steps": int(model.num_timesteps - steps0),
    }


def worker(args: argparse.Namespace) -> None:
    """One rank of a torchrun job: build, warm up, time, and (rank 0) write the job's JSON."""
    import flowrl.distributed as fd

    fd.init(backend="gloo", threads=1)
    sys.argv = [sys.argv[0]]
    import throughput

    world = fd.world_size()
    if args.learner == "flowsac":
        mine = _flowsac_worker(args)
    else:
        mine = _reinflow_worker(args, throughput)
    ranks = [mine]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, mine)
    if fd.is_main():
        job = {
            "world": world,
            "mode": args.mode,
            "learner": args.learner,
            "fps": mine["steps"] / max(r["wall_s"] for r in ranks),
        }
        job["ranks"] = ranks
        args.worker.write_text(json.dumps(job))
    fd.shutdown()


def _reinflow_worker(args: argparse.Namespace, throughput: Any) -> dict[str, Any]:
    """ReinFlow at ``throughput.py``'s recipe setting: this rank's timed run."""
    import flowrl.distributed as fd

    setting = throughput.argparse.Namespace(
        quick=args.quick, total_timesteps=None, seed=args.seed, device="cpu"
    )
    values = throughput.setting_values("recipe", setting)
    world = fd.world_size()
    if args.mode == "weak":  # each rank: the recipe's envs and minibatch rows
        local = dict(values, batch_size=values["batch_size"] * world)
    else:  # the recipe's run split among the ranks
        if values["n_envs"] % world or values["batch_size"] % world:
            raise ValueError(f"{world} ranks do not split n_envs={values['n_envs']} evenly")
        local = dict(values, n_envs=values["n_envs"] // world)
    model = throughput.build("reinflow", local, setting)
    rollout = local["n_envs"] * world * values["n_steps"]
    model.learn(rollout, progress_bar=False)  # warm-up: the first rollout and update
    model.reset_timings()
    model.env.step_seconds = 0.0
    fd.barrier("the start of the timed run")
    comm0 = fd.comm_seconds()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    model.learn(args.rollouts * rollout, reset_num_timesteps=True, progress_bar=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "rank": fd.rank(),
        "wall_s": wall,
        "cpu_s": cpu,
        "rollout_s": model.timings["rollout_s"],
        "env_step_s": model.env.step_seconds,
        "train_s": model.timings["train_s"],
        "comm_s": fd.comm_seconds() - comm0,
        "steps": int(model.num_timesteps),
    }


def run_job(world: int, mode: str, learner: str, args: argparse.Namespace) -> dict[str, Any]:
    """One torchrun job of ``learner`` on ``world`` ranks in ``mode``; its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "job.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            str(Path(__file__).resolve()),
            "--worker",
            str(out),
            "--rollouts",
            str(args.rollouts),
            "--seed",
            str(args.seed),
            "--mode",
            mode,
            "--learner",
            learner,
            *(["--quick"] if args.quick else []),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode and not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        job = json.loads(out.read_text())
        # Written after every rank's timed run and the final gather: the measurement is
        # whole even if a rank then failed on its way out (recorded, and counted in the table).
        job["exit_status"] = proc.returncode
        return job


def summarize(jobs: list[dict[str, Any]], worlds: list[int]) -> dict[str, Any]:
    """Median steps/s per rank count, speed-up and efficiency against 1 rank, time shares.

    ``jobs``: one mode's. The times are per rank (the mean over ranks), medians over jobs.
    """
    out: dict[str, Any] = {}
    for world in worlds:
        mine = [j for j in jobs if j["world"] == world]
        fps = [j["fps"] for j in mine]
        keys = ("wall_s", "rollout_s", "env_step_s", "train_s", "comm_s")
        # Per rank, the median over jobs of each time (rank 0 and the slowest rank).
        shares = {
            key: statistics.median(statistics.mean(r[key] for r in j["ranks"]) for j in mine)
            for key in keys
        }
        out[str(world)] = {"fps_median": statistics.median(fps), "fps": fps, **shares}
    base = out[str(worlds[0])]["fps_median"] if worlds[0] == 1 else None
    for world in worlds:
        row = out[str(world)]
        if base:
            row["speedup"] = row["fps_median"] / base
            row["efficiency"] = row["speedup"] / world
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| learner, scaling | ranks | env steps/s (median) | speed-up | efficiency "
        "| per rank: wall s "
        "| rollout s | env step s | update s | in collectives s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, summary in result["summary"].items():
        for world, row in summary.items():
            lines.append(
                f"| {mode} | {world} | {row['fps_median']:.0f} | "
                f"{row.get('speedup', float('nan')):.2f}× | "
                f"{row.get('efficiency', float('nan')):.0%} | {row['wall_s']:.1f} | "
                f"{row['rollout_s']:.1f} | {row['env_step_s']:.1f} | {row['train_s']:.1f} | "
                f"{row['comm_s']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return None
    worlds = [int(w) for w in args.worlds.split(",")]
    modes = args.modes.split(",")
    learners = args.learners.split(",")
    pairs = [(w, m, n) for n in learners for m in modes for w in worlds]
    order = [p for r in range(args.repeats) for p in (pairs if r % 2 == 0 else pairs[::-1])]
    jobs = []
    for world, mode, learner in order:
        job = run_job(world, mode, learner, args)
        print(f"  {learner}, {mode}, {world} rank(s): {job['fps']:.0f} env steps/s", flush=True)
        jobs.append(job)
    sys.path.insert(0, str(HERE))
    import throughput

    setting = dict(throughput.QUICK if args.quick else throughput.SETTINGS["recipe"])
    result = {
        "benchmark": "distributed",
        "setting": setting,
        "rollouts_timed": args.rollouts,
        "threads_per_rank": 1,
        "backend": "gloo",
        "flowsac_setting": FLOWSAC,
        "summary": {
            f"{n}, {m}": summarize([j for j in jobs if (j["learner"], j["mode"]) == (n, m)], worlds)
            for n in learners
            for m in modes
        },
        "jobs": jobs,
        "machine": machine_info(("stable-baselines3", "gymnasium", "mujoco")),
        "code": code_version(),
        "torch_threads_parent": torch.get_num_threads(),
    }
    result["jobs_exited_with_error"] = sum(1 for j in jobs if j["exit_status"])
    table = markdown(result)
    if result["jobs_exited_with_error"]:
        table += (
            f"\n{result['jobs_exited_with_error']} of {len(jobs)} jobs finished and wrote their "
            "measurement, then a rank exited with an error (exit_status in the JSON).\n"
        )
    write_results(result, table, args.out)
    print(table)
    return result


if __name__ == "__main__":
    main()
