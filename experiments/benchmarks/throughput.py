"""Training throughput of ReinFlow (FlowPolicy, K denoising steps) against SB3 PPO.

Both learners train on the same env with the same number of DummyVecEnv copies, the same
rollout length, minibatch size, epochs, discounting and matched network widths; the script
times ``model.learn(total_timesteps)`` (rollouts + updates, model construction excluded) and
reports env steps per second, their medians over alternating repeats, the ratio
``reinflow_fps / ppo_fps`` and where the time goes (env stepping, the rest of the rollout,
the update).

Run from the repository root::

    .venv/bin/python experiments/benchmarks/throughput.py             # Hopper-v5, minutes
    .venv/bin/python experiments/benchmarks/throughput.py --quick     # smoke run, seconds

Outputs ``experiments/benchmarks/results/throughput.json`` (``--out``) and a markdown table
the same name with ``.md`` next to it; the table is also printed.
"""

from __future__ import annotations

import argparse
import os
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
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from flowrl.algos.reinflow import ReinFlow

LEARNERS = ("reinflow", "ppo")

DEFAULTS: dict[str, Any] = {
    "env": "Hopper-v5",
    "n_envs": 4,
    "n_steps": 512,
    "batch_size": 64,
    "n_epochs": 10,
    "width": 256,
    "depth": 2,
    "num_steps": 4,
    "repeats": 3,
}
# --quick: a smoke run of the whole script in seconds (not a meaningful measurement).
QUICK: dict[str, Any] = {
    "env": "Pendulum-v1",
    "n_envs": 2,
    "n_steps": 64,
    "batch_size": 32,
    "n_epochs": 2,
    "width": 32,
    "depth": 2,
    "num_steps": 4,
    "repeats": 1,
}
GAMMA, GAE_LAMBDA, LEARNING_RATE, CLIP_RANGE = 0.99, 0.95, 3e-4, 0.2

MATCHED = [
    "env id and number of DummyVecEnv copies (each wrapped in Monitor), seed",
    "n_steps, batch_size, n_epochs, gamma, gae_lambda, clip_range, learning rate (3e-4), "
    "ent_coef 0, vf_coef 0.5, max_grad_norm 0.5, advantage normalization, no target_kl "
    "(so both run every epoch)",
    "hidden width W: PPO net_arch pi=[W, W], vf=[W, W]; ReinFlow actor_config "
    "width=W, depth=2 (2 residual blocks) and value_hidden=(W, W)",
    "device (CPU) and torch intra-op threads",
    "optimizer: Adam with the fused implementation for both (FlowPolicy's default; PPO gets "
    "optimizer_kwargs fused=True) unless --ppo-optimizer default",
    "learn(total_timesteps) with the same total, i.e. the same number of rollouts and updates",
]
DIFFERS = [
    "ReinFlow evaluates its velocity net K times per action, in the rollout and again in "
    "every minibatch (the chain log-likelihood); PPO evaluates its Gaussian policy once",
    "ReinFlow's velocity net is a residual MLP: input layer, 2 pre-LayerNorm blocks of two "
    "W x W layers with Mish, a final LayerNorm and the output layer (5 linear layers, "
    "input [a, o, 32-dim time embedding]); PPO's policy net is a 3-layer tanh MLP",
    "ReinFlow has a small noise net sigma(t, o) (noise_hidden, default (64, 64), with a "
    "16-dim time embedding) evaluated K times per action and once more per minibatch for "
    "the chain entropy",
    "ReinFlow stores the K+1 chain states per step and, before each update, re-scores all "
    "rollout chains once (old log-probs) and checks them against the sampler",
    "ReinFlow uses two Adam optimizers (actor, critic) and clips their gradients separately",
]


class TimedDummyVecEnv(DummyVecEnv):
    """DummyVecEnv that accumulates the wall time spent stepping the envs."""

    def __init__(self, env_fns: list[Any]):
        super().__init__(env_fns)
        self.step_seconds = 0.0

    def step_wait(self) -> Any:
        """Step every env (timed)."""
        start = time.perf_counter()
        result = super().step_wait()
        self.step_seconds += time.perf_counter() - start
        return result


class TimedMixin:
    """Accumulates the wall time of ``collect_rollouts`` and ``train`` (SB3 learner mixin)."""

    timings: dict[str, float]

    def reset_timings(self) -> None:
        """Zero the accumulated times."""
        self.timings = {"rollout_s": 0.0, "train_s": 0.0, "refresh_s": 0.0}

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """Timed ``collect_rollouts``."""
        start = time.perf_counter()
        result = super().collect_rollouts(*args, **kwargs)  # type: ignore[misc]
        self.timings["rollout_s"] += time.perf_counter() - start
        return result

    def train(self) -> None:
        """Timed ``train``."""
        start = time.perf_counter()
        super().train()  # type: ignore[misc]
        self.timings["train_s"] += time.perf_counter() - start


class TimedReinFlow(TimedMixin, ReinFlow):
    """ReinFlow with timers (also on the re-scoring of old log-probs before each update)."""

    def _refresh_old_log_probs(self, indices: np.ndarray) -> float:
        start = time.perf_counter()
        result = super()._refresh_old_log_probs(indices)
        self.timings["refresh_s"] += time.perf_counter() - start
        return result


class TimedPPO(TimedMixin, PPO):
    """SB3 PPO with timers."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help=f"gymnasium env id (default {DEFAULTS['env']})")
    parser.add_argument("--n-envs", type=int, help="DummyVecEnv copies (default 4)")
    parser.add_argument("--n-steps", type=int, help="steps per env per rollout (default 512)")
    parser.add_argument("--batch-size", type=int, help="minibatch size (default 64)")
    parser.add_argument("--n-epochs", type=int, help="epochs per update (default 10)")
    parser.add_argument("--width", type=int, help="hidden width W (default 256)")
    parser.add_argument(
        "--depth", type=int, help="residual blocks of ReinFlow's velocity net (default 2)"
    )
    parser.add_argument("--num-steps", type=int, help="ReinFlow's K (default 4)")
    parser.add_argument("--repeats", type=int, help="timed runs per learner (default 3)")
    parser.add_argument(
        "--total-timesteps",
        type=int,
        help="env steps per timed learn() (default 2 rollouts: 2 * n_envs * n_steps)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--check-threads",
        type=int,
        default=2,
        help="torch threads of one extra repeat per learner, reported under thread_check "
        "(default 2; 0 skips it)",
    )
    parser.add_argument("--device", default="cpu", help="torch device of both learners")
    parser.add_argument(
        "--ppo-optimizer",
        choices=("fused", "default"),
        default="fused",
        help="PPO's Adam: fused, as FlowPolicy's default (matched), or SB3's default "
        "(PyTorch's per-tensor loop on CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("experiments/benchmarks/results/throughput.json"),
        help="JSON output; the markdown table goes next to it with the suffix .md",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke settings (Pendulum-v1, n_steps 64)"
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.total_timesteps is None:
        args.total_timesteps = 2 * args.n_envs * args.n_steps
    for key in ("n_envs", "n_steps", "batch_size", "n_epochs", "width", "depth", "num_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.batch_size < 2:
        parser.error("--batch-size must be >= 2 (advantage normalization)")
    return args


def make_env(args: argparse.Namespace) -> TimedDummyVecEnv:
    """``n_envs`` Monitor-wrapped copies of the env, seeded like SB3's ``make_vec_env``."""

    def factory(rank: int) -> Any:
        def make() -> gym.Env:
            env = Monitor(gym.make(args.env))
            env.action_space.seed(args.seed + rank)
            return env

        return make

    venv = TimedDummyVecEnv([factory(i) for i in range(args.n_envs)])
    venv.seed(args.seed)
    return venv


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "learning_rate": LEARNING_RATE,
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "gamma": GAMMA,
        "gae_lambda": GAE_LAMBDA,
        "clip_range": CLIP_RANGE,
        "normalize_advantage": True,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "target_kl": None,
        "verbose": 0,
        "seed": args.seed,
        "device": args.device,
    }


def ppo_policy_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """PPO's MlpPolicy arguments: matched width, and Adam fused unless asked otherwise."""
    kwargs: dict[str, Any] = {"net_arch": {"pi": [args.width] * 2, "vf": [args.width] * 2}}
    if args.ppo_optimizer == "fused":
        kwargs["optimizer_kwargs"] = {"fused": True}
    return kwargs


def build(name: str, args: argparse.Namespace) -> TimedMixin:
    """A fresh learner on its own vectorized env."""
    env, width = make_env(args), args.width
    if name == "reinflow":
        model: Any = TimedReinFlow(
            "FlowPolicy",
            env,
            policy_kwargs={
                "num_steps": args.num_steps,
                "actor_config": {"width": width, "depth": args.depth},
                "value_hidden": (width, width),
            },
            **common_kwargs(args),
        )
    else:
        model = TimedPPO(
            "MlpPolicy",
            env,
            policy_kwargs=ppo_policy_kwargs(args),
            **common_kwargs(args),
        )
    model.reset_timings()
    return model


def network_sizes(models: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Trainable parameter counts of each learner's networks."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    reinflow, ppo = models["reinflow"].policy, models["ppo"].policy
    return {
        "reinflow": {
            "velocity_net": count(reinflow.actor.velocity_net),
            "noise_net": count(reinflow.noise_net) + count(reinflow.noise_time_embedding),
            "value_net": count(reinflow.value_net),
        },
        "ppo": {
            "policy_net": count(ppo.mlp_extractor.policy_net)
            + count(ppo.action_net)
            + ppo.log_std.numel(),
            "value_net": count(ppo.mlp_extractor.value_net) + count(ppo.value_net),
        },
    }


def timed_learn(model: Any, total_timesteps: int) -> dict[str, float]:
    """One ``learn(total_timesteps)`` from a fresh timestep count, with its time breakdown."""
    model.reset_timings()
    model.env.step_seconds = 0.0
    updates_before = model._n_updates
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model.learn(total_timesteps, reset_num_timesteps=True, progress_bar=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    steps = int(model.num_timesteps)
    timings = model.timings
    rollout, train, env_step = timings["rollout_s"], timings["train_s"], model.env.step_seconds
    # SB3 counts epochs in PPO's _n_updates and ReinFlow counts epochs too: epochs run.
    epochs = int(model._n_updates - updates_before)
    minibatches_per_epoch = -(-(model.n_steps * model.n_envs) // model.batch_size)
    gradient_steps = epochs * minibatches_per_epoch
    run = {
        "steps": steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "fps": steps / wall,
        # Steps per second of process CPU time: less sensitive to being descheduled by other
        # processes (not to sharing a physical core); wall-clock fps is the headline number.
        "fps_cpu": steps / cpu if cpu > 0 else float("nan"),
        "rollout_s": rollout,
        "rollout_env_step_s": env_step,
        "rollout_policy_and_buffer_s": rollout - env_step,
        "train_s": train,
        "other_s": wall - rollout - train,
        "gradient_steps": gradient_steps,
        "rollout_fps": steps / rollout if rollout > 0 else float("nan"),
        "train_ms_per_gradient_step": 1e3 * train / gradient_steps if gradient_steps else 0.0,
    }
    if timings["refresh_s"]:
        run["train_refresh_old_log_probs_s"] = timings["refresh_s"]
    return run


def run_repeats(
    models: dict[str, Any], total_timesteps: int, repeats: int, start_index: int = 0
) -> dict[str, list[dict[str, float]]]:
    """Alternate the learners' order every repeat (A B, B A, …) to spread machine noise."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in LEARNERS}
    for repeat in range(repeats):
        order = LEARNERS if (start_index + repeat) % 2 == 0 else LEARNERS[::-1]
        for name in order:
            run = timed_learn(models[name], total_timesteps)
            run["repeat"], run["position"] = repeat, order.index(name)
            runs[name].append(run)
            print(
                f"  repeat {repeat} {name:8s} {run['fps']:8.1f} steps/s "
                f"(rollout {run['rollout_s']:.2f} s, train {run['train_s']:.2f} s)",
                flush=True,
            )
    return runs


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians (and spread of fps) of every per-run number, and the fps ratio."""
    medians: dict[str, dict[str, float]] = {}
    for name, items in runs.items():
        keys = [k for k in items[0] if k not in ("repeat", "position")]
        medians[name] = {k: float(statistics.median(r[k] for r in items)) for k in keys}
        fps = [r["fps"] for r in items]
        medians[name]["fps_min"], medians[name]["fps_max"] = min(fps), max(fps)
    ratio = medians["reinflow"]["fps"] / medians["ppo"]["fps"]
    ratio_cpu = medians["reinflow"]["fps_cpu"] / medians["ppo"]["fps_cpu"]
    return {
        "median": medians,
        "ratio_reinflow_over_ppo": ratio,
        "ratio_reinflow_over_ppo_cpu_time": ratio_cpu,
    }


def breakdown(median: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Shares of the median wall time: env stepping, rest of rollout, update, other."""
    shares = {}
    for name, m in median.items():
        wall = m["wall_s"]
        shares[name] = {
            "rollout_env_step": m["rollout_env_step_s"] / wall,
            "rollout_policy_and_buffer": m["rollout_policy_and_buffer_s"] / wall,
            "train": m["train_s"] / wall,
            "other": m["other_s"] / wall,
        }
    return shares


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    med = result["median"]
    lines = [
        f"Training throughput on {s['env']}: {s['n_envs']} envs x {s['n_steps']} steps per "
        f"rollout, batch {s['batch_size']}, {s['n_epochs']} epochs, width {s['width']}, "
        f"ReinFlow K = {s['num_steps']} and {s['depth']} residual blocks; "
        f"learn({s['total_timesteps']}) per run, "
        f"{s['repeats']} alternating repeats, torch threads {s['torch_threads']}, "
        f"median of runs.",
        "",
        "| learner | env steps/s (median) | per run | rollout s | env step s | "
        "policy + buffer s | train s | ms / gradient step | other s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in LEARNERS:
        m = med[name]
        per_run = ", ".join(f"{r['fps']:.0f}" for r in result["runs"][name])
        lines.append(
            f"| {name} | {m['fps']:.0f} | {per_run} | {m['rollout_s']:.2f} | "
            f"{m['rollout_env_step_s']:.2f} | {m['rollout_policy_and_buffer_s']:.2f} | "
            f"{m['train_s']:.2f} | {m['train_ms_per_gradient_step']:.2f} | "
            f"{m['other_s']:.2f} |"
        )
    lines += [
        "",
        f"**ratio reinflow_fps / ppo_fps = {result['ratio_reinflow_over_ppo']:.3f}** "
        f"(on process CPU time instead of wall time: "
        f"{result['ratio_reinflow_over_ppo_cpu_time']:.3f})",
    ]
    refresh = med["reinflow"].get("train_refresh_old_log_probs_s")
    if refresh is not None:
        lines.append(f"(ReinFlow's train time includes {refresh:.2f} s re-scoring old log-probs.)")
    starved = [
        f"{name} repeat {r['repeat']}"
        for name in LEARNERS
        for r in result["runs"][name]
        if r["cpu_s"] < 0.9 * r["wall_s"]
    ]
    if starved:
        lines.append(
            "Runs that got < 90 % of a CPU (other processes were running): "
            + ", ".join(starved)
            + "."
        )
    check = result.get("thread_check")
    if check:
        lines += [
            "",
            f"Thread check (1 repeat each, {check['threads']} torch threads): "
            + ", ".join(f"{name} {check['median'][name]['fps']:.0f} steps/s" for name in LEARNERS)
            + f", ratio {check['ratio_reinflow_over_ppo']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"building learners on {args.env} ...", flush=True)
    models = {name: build(name, args) for name in LEARNERS}
    warmup_steps = args.n_envs * args.n_steps  # one rollout and one update each
    print(f"warm-up: learn({warmup_steps}) per learner (not timed)", flush=True)
    for name in LEARNERS:
        models[name].learn(warmup_steps, progress_bar=False)
    print(f"timing learn({args.total_timesteps}) x {args.repeats} per learner", flush=True)
    runs = run_repeats(models, args.total_timesteps, args.repeats)
    summary = summarize(runs)
    thread_check = None
    if args.check_threads > 0:
        other = args.check_threads
        print(f"thread check: 1 repeat per learner with {other} torch threads", flush=True)
        torch.set_num_threads(other)
        check_runs = run_repeats(models, args.total_timesteps, 1, start_index=args.repeats)
        torch.set_num_threads(args.threads)
        thread_check = {"threads": other, "runs": check_runs, **summarize(check_runs)}
    settings = {
        "env": args.env,
        "n_envs": args.n_envs,
        "vec_env": "DummyVecEnv (Monitor-wrapped envs)",
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "gamma": GAMMA,
        "gae_lambda": GAE_LAMBDA,
        "learning_rate": LEARNING_RATE,
        "clip_range": CLIP_RANGE,
        "width": args.width,
        "depth": args.depth,
        "num_steps": args.num_steps,
        "repeats": args.repeats,
        "total_timesteps": args.total_timesteps,
        "warmup_timesteps": warmup_steps,
        "device": args.device,
        "seed": args.seed,
        "torch_threads": args.threads,
        "quick": args.quick,
        "reinflow": {
            "policy": "FlowPolicy",
            "policy_kwargs": {
                "num_steps": args.num_steps,
                "actor_config": {"width": args.width, "depth": args.depth},
                "value_hidden": [args.width, args.width],
                "noise_hidden": list(models["reinflow"].policy.noise_hidden),
            },
        },
        "ppo": {
            "policy": "MlpPolicy (Gaussian, state-independent log-std)",
            "policy_kwargs": ppo_policy_kwargs(args),
        },
    }
    result = {
        "what": "env steps per second of model.learn(total_timesteps): rollouts + updates, "
        "model construction and warm-up excluded",
        "machine": {
            **machine_info(("stable_baselines3", "gymnasium", "mujoco")),
            "torch_threads": args.threads,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "code": code_version(),
        "settings": settings,
        "matched": MATCHED,
        "differs": DIFFERS,
        "parameters": network_sizes(models),
        "runs": runs,
        **summary,
        "time_breakdown": breakdown(summary["median"]),
        "thread_check": thread_check,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    table = markdown(result)
    write_results(result, table, args.out)
    print()
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
