"""Time to a good policy: wall-clock from data (or from nothing) to a target return on Hopper-v5.

Two ways to a deterministic return of ``--target`` (default 2000), each timed from the start
of the process's work to the end of the evaluation that first reaches it:

* ``reinflow``: load the shipped Hopper dataset, behaviour-clone a flow actor with the
  recipe's BC settings (``configs/recipe/reinflow_mujoco.yaml``: width 128, depth 2, K = 4,
  5000 steps of batch 256), then fine-tune it with ReinFlow on the recipe
  (``flowrl.recipes.reinflow_mujoco()``, 4 envs);
* ``ppo``: SB3 PPO from scratch with the settings of the README's PPO row (SB3's defaults,
  1 env, observations and rewards normalized by ``VecNormalize``), Adam fused as ReinFlow's;
* ``policyflow``, ``fpo``, ``fpo_pp``, ``dppo``: the other on-policy learners from the same
  BC actor, with the recipe's rollout and update settings (``flowrl.recipes.reinflow_mujoco``
  without its ReinFlow noise bounds) and their own policy defaults, as the README's
  head-to-head (PolicyFlow with the noise of ``experiment=hopper_medium_1m_policyflow``).

Both are evaluated before training and every ``--eval-every`` env steps (deterministic
actions, ``--eval-episodes`` episodes on a separately seeded env); a run stops at the first
evaluation whose mean return reaches the target, or at ``--max-steps``. The JSON of a run
records every evaluation with the env steps, the wall time with and without the
evaluations, and the return.

Run from the repository root, one thread per run, at most two runs at a time::

    .venv/bin/python experiments/benchmarks/time_to_return.py run --learner reinflow --seed 0
    .venv/bin/python experiments/benchmarks/time_to_return.py run --learner ppo --seed 0
    .venv/bin/python experiments/benchmarks/time_to_return.py summarize

Per-run JSONs go to ``experiments/benchmarks/results/time_to_return/``; ``summarize`` writes
``experiments/benchmarks/results/time_to_return.{json,md}`` (median and range over seeds,
and the ratio of the medians).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import code_version, machine_info, write_results
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from flowrl import recipes
from flowrl.algos import DPPO, FPO, PolicyFlow, ReinFlow
from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.data import load_dataset

ENV_ID = "Hopper-v5"
DATASET = Path("experiments/datasets/hopper_medium_v5.npz")
RESULTS = Path("experiments/benchmarks/results")
RUNS = RESULTS / "time_to_return"
# The recipe's BC stage (configs/recipe/reinflow_mujoco.yaml; tests keep them equal).
BC_ACTOR = {"width": 128, "depth": 2, "num_steps": 4}
BC_TRAIN = {"steps": 5000, "batch_size": 256}
# The on-policy learners that start from the BC actor: algorithm, policy alias, arguments.
FROM_DATA: dict[str, tuple[type, str, dict[str, Any], dict[str, Any]]] = {
    "reinflow": (ReinFlow, "FlowPolicy", {}, {}),
    "reinflow_compiled": (ReinFlow, "FlowPolicy", {"compile": True}, {}),
    # configs/experiment/hopper_medium_1m_policyflow.yaml's noise
    "policyflow": (
        PolicyFlow,
        "PolicyFlowPolicy",
        {},
        {"initial_std": 0.0, "sigma_init": 0.1, "sigma_min": 0.01, "sigma_max": 1.0},
    ),
    "fpo": (FPO, "FPOPolicy", {}, {}),
    "fpo_pp": (FPO, "FPOPolicy", {"variant": "fpo++"}, {}),
    "dppo": (DPPO, "DiffusionPolicy", {}, {}),
}
LEARNERS = (*FROM_DATA, "ppo")


class Clock:
    """Wall time since start, with the time spent in evaluations kept apart."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.eval_seconds = 0.0

    def wall(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.start


class TargetCallback(BaseCallback):
    """Evaluate every ``every`` env steps; stop training once the mean return reaches ``target``."""

    def __init__(self, evaluate: Any, every: int, target: float, clock: Clock, log: list):
        super().__init__()
        self.evaluate, self.every, self.target = evaluate, every, target
        self.clock, self.log = clock, log
        self.next_eval = every
        self.reached = False

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        self.next_eval += self.every
        self.reached = record_eval(
            self.evaluate, self.num_timesteps, self.clock, self.log, self.target
        )
        return not self.reached


def record_eval(evaluate: Any, steps: int, clock: Clock, log: list, target: float) -> bool:
    """Run one evaluation, append its row to ``log``; whether it reached the target."""
    start = time.perf_counter()
    mean, std = evaluate()
    clock.eval_seconds += time.perf_counter() - start
    wall = clock.wall()
    row = {
        "env_steps": int(steps),
        "wall_s": round(wall, 2),
        "wall_without_eval_s": round(wall - clock.eval_seconds, 2),
        "return_mean": round(float(mean), 1),
        "return_std": round(float(std), 1),
    }
    log.append(row)
    print(json.dumps(row), flush=True)
    return bool(mean >= target)


def run_from_data(args: argparse.Namespace, clock: Clock, log: list) -> dict:
    """Load the dataset, BC, then fine-tune with an on-policy learner (the clock runs)."""
    data = load_dataset(DATASET)
    env = make_vec_env(ENV_ID, n_envs=recipes.REINFLOW_MUJOCO_N_ENVS, seed=args.seed)
    bc = FlowBC.from_dataset(
        data,
        env=env.envs[0],  # type: ignore[attr-defined]
        actor_config=BC_ACTOR,
        config=BCConfig(**{**BC_TRAIN, "steps": args.bc_steps}, seed=args.seed),
    )
    bc.learn(progress_bar=False)
    bc_seconds = clock.wall()
    algo, alias, extra, policy = FROM_DATA[args.learner]
    gamma = {} if args.gamma is None else {"gamma": args.gamma}
    settings = recipes.reinflow_mujoco(pretrained=bc.actor_ema, **gamma)
    if algo is not ReinFlow:  # the recipe's rollout and update, the learner's own policy
        settings["policy_kwargs"] = {"pretrained": bc.actor_ema, **policy}
    model = algo(alias, env, seed=args.seed, **extra, **settings)
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=10_000 + args.seed)

    def evaluate() -> tuple[float, float]:
        return evaluate_policy(model, eval_env, args.eval_episodes, deterministic=True)

    info = {"bc_seconds": round(bc_seconds, 2), "bc_steps": args.bc_steps}
    return {**info, **train_until(model, evaluate, args, clock, log)}


def run_ppo(args: argparse.Namespace, clock: Clock, log: list) -> dict:
    env = VecNormalize(make_vec_env(ENV_ID, n_envs=1, seed=args.seed))
    model = PPO(
        "MlpPolicy", env, seed=args.seed, policy_kwargs={"optimizer_kwargs": {"fused": True}}
    )
    eval_env = VecNormalize(
        make_vec_env(ENV_ID, n_envs=1, seed=10_000 + args.seed), training=False, norm_reward=False
    )

    def evaluate() -> tuple[float, float]:
        eval_env.obs_rms = env.obs_rms  # the training statistics, frozen for the evaluation
        return evaluate_policy(model, eval_env, args.eval_episodes, deterministic=True)

    return train_until(model, evaluate, args, clock, log)


def train_until(
    model: Any, evaluate: Any, args: argparse.Namespace, clock: Clock, log: list
) -> dict:
    """Evaluate the start, then learn until the target or ``max_steps``."""
    if record_eval(evaluate, 0, clock, log, args.target):
        return {"reached": True}
    callback = TargetCallback(evaluate, args.eval_every, args.target, clock, log)
    model.learn(args.max_steps, callback=callback, progress_bar=False)
    return {"reached": callback.reached}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    clock, log = Clock(), []
    run_learner = run_ppo if args.learner == "ppo" else run_from_data
    info = run_learner(args, clock, log)
    last = log[-1]
    name = args.learner if args.gamma is None else f"{args.learner}_gamma{args.gamma:g}"
    result = {
        "learner": name,
        "gamma": args.gamma,
        "seed": args.seed,
        "target": args.target,
        "eval_every": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "max_steps": args.max_steps,
        "torch_threads": args.threads,
        **info,
        "env_steps_to_target": last["env_steps"] if info["reached"] else None,
        "wall_s_to_target": last["wall_s"] if info["reached"] else None,
        "wall_without_eval_s_to_target": last["wall_without_eval_s"] if info["reached"] else None,
        "wall_s_total": round(clock.wall(), 2),
        "evaluations": log,
        "machine": machine_info(("stable_baselines3", "gymnasium", "mujoco")),
        "code": code_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{name}_seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "per_seed": values,
    }


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(args.out_dir.glob("*_seed*.json")):
        item = json.loads(path.read_text())
        runs.setdefault(item["learner"], []).append(item)
    table: dict[str, Any] = {}
    for name, items in runs.items():
        items.sort(key=lambda r: r["seed"])
        reached = [r for r in items if r["env_steps_to_target"] is not None]
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in items],
            "reached": f"{len(reached)}/{len(items)}",
        }
        # A run that never reached the target counts with what it spent (a lower bound).
        censored = {
            "wall_s_to_target": lambda r: r["wall_s_total"],
            "wall_without_eval_s_to_target": lambda r: r["evaluations"][-1]["wall_without_eval_s"],
            "env_steps_to_target": lambda r: r["evaluations"][-1]["env_steps"],
        }
        for key, spent in censored.items():
            row[key] = _spread([r[key] if r[key] is not None else spent(r) for r in items])
        if name != "ppo":
            row["bc_seconds"] = _spread([r["bc_seconds"] for r in items])
        row["start_return"] = [r["evaluations"][0]["return_mean"] for r in items]
        table[name] = row
    ratios = {}
    for name in table:
        if name != "ppo" and "ppo" in table:
            for key in ("wall_s_to_target", "wall_without_eval_s_to_target"):
                ratios[f"{name}_over_ppo_{key}"] = (
                    table[name][key]["median"] / table["ppo"][key]["median"]
                )
    example = next(iter(runs.values()))[0]
    result = {
        "what": f"wall-clock to a deterministic return >= {example['target']} on {ENV_ID}",
        "settings": {
            k: example[k] for k in ("target", "eval_every", "eval_episodes", "torch_threads")
        },
        "max_steps": {name: items[0]["max_steps"] for name, items in runs.items()},
        "learners": table,
        "ratios_of_medians": ratios,
        "machine": example["machine"],
        "code": {
            name: sorted({str(r["code"]["git_commit"]) for r in items})
            for name, items in runs.items()
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    write_results(result, markdown(result), args.out)
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Time to a deterministic return >= {s['target']} on {ENV_ID}: evaluation every "
        f"{s['eval_every']} env steps ({s['eval_episodes']} episodes), torch threads "
        f"{s['torch_threads']}, two runs at a time on 2 cores. The clock of the learners from "
        "data includes loading the dataset and BC.",
        "",
        "| learner | reached | wall s to target, median (min–max) | without evaluations | "
        "env steps to target, median | per seed (s) | start return |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["learners"].items():
        w, we, st = (
            row["wall_s_to_target"],
            row["wall_without_eval_s_to_target"],
            row["env_steps_to_target"],
        )
        lines.append(
            f"| {name} | {row['reached']} | {w['median']:.0f} ({w['min']:.0f}–{w['max']:.0f}) | "
            f"{we['median']:.0f} | {st['median']:.0f} | "
            f"{', '.join(f'{v:.0f}' for v in w['per_seed'])} | "
            f"{', '.join(f'{v:.0f}' for v in row['start_return'])} |"
        )
    lines.append("")
    for key, value in result["ratios_of_medians"].items():
        lines.append(f"- {key}: **{value:.3f}**")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one learner, one seed")
    r.add_argument("--learner", choices=LEARNERS, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--target", type=float, default=2000.0)
    r.add_argument("--eval-every", type=int, default=10_000)
    r.add_argument("--eval-episodes", type=int, default=5)
    r.add_argument("--max-steps", type=int, default=None, help="default: 1M (PPO), 500k")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument(
        "--gamma",
        type=float,
        help="discount of the learners from data (default: the recipe's 0.999); the run is "
        "tabulated as <learner>_gamma<value>",
    )
    r.add_argument(
        "--bc-steps", type=int, default=BC_TRAIN["steps"], help="BC steps (recipe: 5000)"
    )
    r.add_argument("--out-dir", type=Path, default=RUNS, help="folder of the per-run JSONs")
    m = sub.add_parser("summarize", help="tables from the per-run JSONs")
    m.add_argument("--out-dir", type=Path, default=RUNS, help="folder of the per-run JSONs")
    m.add_argument("--out", type=Path, default=RESULTS / "time_to_return.json")
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.max_steps is None:
            args.max_steps = 1_000_000 if args.learner == "ppo" else 500_000
        if min(args.eval_every, args.eval_episodes, args.max_steps, args.bc_steps) < 1:
            parser.error("--eval-every, --eval-episodes, --max-steps and --bc-steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    np.set_printoptions(precision=3)
    gym.logger.min_level = 40
    args = parse_args(argv)
    if args.command == "run":
        run(args)
    else:
        summarize(args)


if __name__ == "__main__":
    main()
