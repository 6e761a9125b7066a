"""MultiGoal mode coverage: does a policy reach every goal, and how evenly?

PolicyFlow's claim (arXiv 2602.01156) is that on MultiGoal it reaches all goals evenly where
PPO, FPO and DPPO settle on a subset. This benchmark trains, from scratch and with one set of
PPO hyperparameters, a Gaussian policy (SB3's PPO, and the same policy on flowrl's on-policy
core), ReinFlow (chain start a⁰ ~ N(0, I) and a⁰ = 0) and PolicyFlow, each with and without
KL-Cov, and FPO, FPO++ and DPPO (without: their ratios are per pair or per denoising step), on
``MultiGoal-v0`` with 4 goals and with 6 (``num_goals=6``), 5 seeds each. Per run it plays 100
evaluation episodes with the stochastic and with the deterministic policy and records the
share that reach a goal, how many distinct goals they reach, and the normalized entropy of the
goal histogram (1.0 = every goal equally often; :func:`flowrl.metrics.normalized_entropy`).

    python experiments/benchmarks/multigoal.py --jobs 2           # everything, ~80 min on 2 cores
    python experiments/benchmarks/multigoal.py --quick            # smoke run, ~1 min
    python experiments/benchmarks/multigoal.py --methods policyflow,ppo --seeds 0,1
    python experiments/benchmarks/multigoal.py --existing        # summarize what has run so far

Every run writes its own JSON under ``--runs-dir`` and is skipped when rerun with the same
settings, so an interrupted benchmark resumes; the summary (JSON + markdown table) goes to
``--out`` and the trajectory figures (seed 0, 30 stochastic episodes per panel) to
``--figures``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from common import code_version, machine_info, write_results
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from flowrl.algos import DPPO, FPO, PolicyFlow, ReinFlow
from flowrl.metrics import iqm, iqm_bootstrap_ci, normalized_entropy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

importlib.import_module("flowrl.envs")  # registers MultiGoal-v0
multigoal = importlib.import_module("flowrl.envs.multigoal")

# One set of PPO hyperparameters for every method (SB3's PPO defaults but for the rollout
# size, and an entropy bonus of 0.01 on each policy's Gaussian part).
PPO_SETTINGS = dict(
    n_steps=256, batch_size=256, n_epochs=10, learning_rate=3e-4, gamma=0.99, gae_lambda=0.95
)
ENT_COEF = 0.01
N_ENVS = 4
# Rewards of the paper's MultiGoal reach -60 per step; scaled by 0.1 they stay O(1) for the
# value functions (the same for every method).
ENV_KWARGS = dict(reward_scale=0.1)
FLOW = dict(actor_config=dict(width=64, depth=2), num_steps=4, value_hidden=(64, 64))
# KL-Cov: the paper's 2e-3 of a batch would be one sample of a 256-sample minibatch; 2 %
# (5 samples) is the share used here, with the paper's β = 1.
KL_COV = dict(entropy_control="kl_cov", cov_fraction=0.02, kl_cov_coef=1.0)
# PolicyFlow's Brownian weight w_b: 0.1, chosen on one-seed probes of the 4-goal task; the
# ablation methods policyflow_wb0 and policyflow_wb0.01 (the library default) rerun it with
# every seed.
POLICYFLOW = dict(brownian_coef=0.1)


def _ppo(env, seed: int, control: bool) -> Any:
    if control:
        raise ValueError("SB3's PPO has no KL-Cov: use 'gaussian+klcov' (PPO on the core)")
    return PPO(
        "MlpPolicy",
        env,
        seed=seed,
        ent_coef=ENT_COEF,
        policy_kwargs=dict(net_arch=[64, 64]),
        **PPO_SETTINGS,
    )


def _gaussian(env, seed: int, control: bool) -> Any:
    # PolicyFlowPolicy with z = 0 and K = 1 is a Gaussian policy: a = v_θ(0, 0, o) + n, and
    # the grid estimator's ratio is then exact (flowrl.flow.ratio), so this is Gaussian PPO
    # on the on-policy core, where KL-Cov can be switched on.
    return PolicyFlow(
        "PolicyFlowPolicy",
        env,
        seed=seed,
        ent_coef=ENT_COEF,
        brownian_coef=0.0,
        ratio_estimator="grid",
        policy_kwargs={**FLOW, "num_steps": 1, "initial_std": 0.0, "sigma_init": 1.0},
        **PPO_SETTINGS,
        **(KL_COV if control else {}),
    )


def _reinflow(initial_std: float) -> Callable[..., Any]:
    def build(env, seed: int, control: bool) -> Any:
        return ReinFlow(
            "FlowPolicy",
            env,
            seed=seed,
            ent_coef=ENT_COEF,
            policy_kwargs={**FLOW, "initial_std": initial_std, "noise_hidden": (32, 32)},
            **PPO_SETTINGS,
            **(KL_COV if control else {}),
        )

    return build


def _policyflow(brownian_coef: float) -> Callable[..., Any]:
    def build(env, seed: int, control: bool) -> Any:
        return PolicyFlow(
            "PolicyFlowPolicy",
            env,
            seed=seed,
            ent_coef=ENT_COEF,
            brownian_coef=brownian_coef,
            policy_kwargs=FLOW,
            **PPO_SETTINGS,
            **(KL_COV if control else {}),
        )

    return build


def _fpo(variant: str) -> Callable[..., Any]:
    def build(env, seed: int, control: bool) -> Any:
        # FPO's clip range is its paper's 0.05 (the class default); its policy has no
        # entropy to reward, so ENT_COEF has nothing to act on. a⁰ ~ N(0, I) as in FPO.
        return FPO(
            "FPOPolicy",
            env,
            seed=seed,
            variant=variant,
            policy_kwargs=FLOW,
            **PPO_SETTINGS,
            **(KL_COV if control else {}),
        )

    return build


def _dppo(env, seed: int, control: bool) -> Any:
    # A fresh DDPM noise-prediction policy (K = 4, every step fine-tuned, std floor 0.1);
    # its step stds come from the schedule, so ENT_COEF has nothing to act on.
    if control:
        raise ValueError("DPPO has one ratio per denoising step: entropy control does not apply")
    return DPPO("DiffusionPolicy", env, seed=seed, policy_kwargs=FLOW, **PPO_SETTINGS)


BUILDERS: dict[str, Callable[..., Any]] = {
    "ppo": _ppo,
    "gaussian": _gaussian,
    "reinflow_a0_normal": _reinflow(1.0),
    "reinflow_a0_zero": _reinflow(0.0),
    "policyflow": _policyflow(POLICYFLOW["brownian_coef"]),
    "fpo": _fpo("fpo"),
    "fpo_pp": _fpo("fpo++"),
    "dppo": _dppo,
    # Ablations of the Brownian weight (not in the default list of methods).
    "policyflow_wb0": _policyflow(0.0),
    "policyflow_wb0.01": _policyflow(0.01),
}
METHODS = [
    "ppo",
    "gaussian",
    "gaussian+klcov",
    "reinflow_a0_normal",
    "reinflow_a0_normal+klcov",
    "reinflow_a0_zero",
    "reinflow_a0_zero+klcov",
    "policyflow",
    "policyflow+klcov",
    "fpo",
    "fpo_pp",
    "dppo",
]
ABLATIONS = ["policyflow_wb0", "policyflow_wb0.01"]
LABELS = {
    "ppo": "PPO (SB3, Gaussian)",
    "gaussian": "Gaussian PPO (core)",
    "reinflow_a0_normal": "ReinFlow, a⁰ ~ N(0, I)",
    "reinflow_a0_zero": "ReinFlow, a⁰ = 0",
    "policyflow": "PolicyFlow",
    "fpo": "FPO",
    "fpo_pp": "FPO++",
    "dppo": "DPPO",
    "policyflow_wb0": "PolicyFlow, w_b = 0",
    "policyflow_wb0.01": "PolicyFlow, w_b = 0.01",
}


def label(method: str) -> str:
    """A method's name in tables and figures."""
    base, _, control = method.partition("+")
    return LABELS[base] + (" + KL-Cov" if control else "")


def build(method: str, env, seed: int) -> Any:
    """The model of ``method`` ("<base>" or "<base>+klcov") on ``env``."""
    base, _, control = method.partition("+")
    if base not in BUILDERS or control not in ("", "klcov"):
        raise ValueError(f"unknown method {method!r}; choose from {METHODS + ABLATIONS}")
    return BUILDERS[base](env, seed, control == "klcov")


# ---------------------------------------------------------------------- one run


def evaluate(model: Any, num_goals: int, seed: int, episodes: int, deterministic: bool):
    """Play ``episodes`` episodes; the metrics and the first 30 trajectories."""
    env = make_vec_env(
        "MultiGoal-v0", n_envs=1, seed=seed, env_kwargs={**ENV_KWARGS, "num_goals": num_goals}
    )
    goals = env.envs[0].unwrapped.goals
    finals, paths, reached = [], [], 0
    for _ in range(episodes):
        obs = env.reset()
        path = [obs[0].tolist()]
        while True:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, _, done, info = env.step(action)
            if done[0]:
                final = info[0]["terminal_observation"]
                path.append(final.tolist())
                finals.append(final)
                reached += bool(info[0].get("is_success", False))
                break
            path.append(obs[0].tolist())
        if len(paths) < 30:
            paths.append(path)
    counts = multigoal.goal_coverage(np.array(finals), goals=goals)
    return {
        "success_rate": reached / episodes,
        "goals_reached": int((counts > 0).sum()),
        "goal_entropy": normalized_entropy(counts),
        "goal_counts": counts.tolist(),
        "trajectories": paths,
    }


def _finished(task: dict[str, Any]) -> bool:
    """Whether ``task``'s run file exists and holds a run of exactly these settings."""
    path = Path(task["path"])
    return path.exists() and json.loads(path.read_text()).get("task") == task


def run(task: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (method, num_goals, seed); write and return its record."""
    path = Path(task["path"])
    if _finished(task):
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    env = make_vec_env(
        "MultiGoal-v0",
        n_envs=N_ENVS,
        seed=task["seed"],
        env_kwargs={**ENV_KWARGS, "num_goals": task["num_goals"]},
    )
    model = build(task["method"], env, task["seed"])
    start = time.perf_counter()
    model.learn(task["steps"])
    seconds = time.perf_counter() - start
    record = {"task": task, "train_seconds": seconds}
    for mode in ("stochastic", "deterministic"):
        record[mode] = evaluate(
            model,
            task["num_goals"],
            task["seed"] + 10_000,
            task["episodes"],
            deterministic=mode == "deterministic",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)  # a finished run is never half-written
    print(
        f"{task['method']:>26} goals={task['num_goals']} seed={task['seed']}: "
        f"success {record['stochastic']['success_rate']:.2f}, goals "
        f"{record['stochastic']['goals_reached']}, entropy "
        f"{record['stochastic']['goal_entropy']:.2f} ({seconds:.0f} s)",
        flush=True,
    )
    return record


# ---------------------------------------------------------------------- summary


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (num_goals, method): mean, std, IQM and its 95 % CI of each metric."""
    rows = []
    keys = sorted({(r["task"]["num_goals"], r["task"]["method"]) for r in records})
    order = METHODS + ABLATIONS
    keys.sort(key=lambda k: (k[0], order.index(k[1]) if k[1] in order else len(order)))
    for num_goals, method in keys:
        group = [r for r in records if r["task"]["num_goals"] == num_goals]
        group = [r for r in group if r["task"]["method"] == method]
        row: dict[str, Any] = {
            "num_goals": num_goals,
            "method": method,
            "seeds": sorted(r["task"]["seed"] for r in group),
        }
        for mode in ("stochastic", "deterministic"):
            for metric in ("success_rate", "goals_reached", "goal_entropy"):
                values = np.array([r[mode][metric] for r in group], dtype=np.float64)
                row[f"{mode}/{metric}"] = {
                    "values": values.tolist(),
                    "mean": float(values.mean()),
                    "std": float(values.std()),
                    "iqm": iqm(values),
                    "iqm_ci95": iqm_bootstrap_ci(values),
                }
        row["train_seconds_mean"] = float(np.mean([r["train_seconds"] for r in group]))
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], command: str, steps: int, episodes: int) -> str:
    """The summary as markdown tables, one per goal layout."""
    out = [
        "# MultiGoal mode coverage",
        "",
        f"`{command}`: {steps} env steps per run, {episodes} evaluation episodes per "
        "policy mode; mean ± std over seeds, and for the goal entropy its IQM with a 95 % "
        "bootstrap interval. Goal entropy: the entropy of the histogram of goals reached, "
        "divided by log(number of goals) (1.0 = all goals equally often).",
    ]
    fmt = lambda s: f"{s['mean']:.2f} ± {s['std']:.2f}"  # noqa: E731
    for num_goals in sorted({r["num_goals"] for r in rows}):
        out += [
            "",
            f"## {num_goals} goals",
            "",
            "| method | seeds | success (stoch.) | goals reached (stoch.) | goal entropy "
            "(stoch.) | entropy IQM [95 % CI] | goals reached (det.) | goal entropy (det.) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["num_goals"] == num_goals):
            entropy = r["stochastic/goal_entropy"]
            low, high = entropy["iqm_ci95"]
            goals = r["stochastic/goals_reached"]["values"]
            out.append(
                f"| {label(r['method'])} | {len(r['seeds'])} "
                f"| {fmt(r['stochastic/success_rate'])} "
                f"| {fmt(r['stochastic/goals_reached'])} ({'/'.join(str(int(g)) for g in goals)}) "
                f"| {fmt(entropy)} | {entropy['iqm']:.2f} [{low:.2f}, {high:.2f}] "
                f"| {fmt(r['deterministic/goals_reached'])} "
                f"| {fmt(r['deterministic/goal_entropy'])} |"
            )
    return "\n".join(out) + "\n"


def _draw(ax, record: dict[str, Any]) -> None:
    goals = multigoal.goal_layout(record["task"]["num_goals"])
    for gx, gy in goals:
        ax.add_patch(plt.Circle((gx, gy), 1.0, color="tab:green", alpha=0.3))
    for path in record["stochastic"]["trajectories"]:
        xy = np.array(path)
        ax.plot(xy[:, 0], xy[:, 1], color="tab:blue", alpha=0.4, linewidth=0.8)
        ax.plot(xy[-1, 0], xy[-1, 1], "o", color="tab:red", markersize=2)
    bound = multigoal.BOUND
    ax.set(xlim=(-bound, bound), ylim=(-bound, bound), aspect="equal", xticks=[], yticks=[])


def figures(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Trajectory figures of seed 0: one PNG per method (a panel per goal layout) and one of all."""
    folder.mkdir(parents=True, exist_ok=True)
    seed0 = {
        (r["task"]["method"], r["task"]["num_goals"]): r for r in records if r["task"]["seed"] == 0
    }
    methods = [m for m in METHODS + ABLATIONS if any(key[0] == m for key in seed0)]
    layouts = sorted({key[1] for key in seed0})
    written = []
    for method in methods:
        fig, axes = plt.subplots(1, len(layouts), figsize=(3.2 * len(layouts), 3.4), squeeze=False)
        for ax, num_goals in zip(axes[0], layouts, strict=True):
            if (method, num_goals) in seed0:
                _draw(ax, seed0[(method, num_goals)])
            ax.set_title(f"{num_goals} goals", fontsize=9)
        fig.suptitle(f"{label(method)}: 30 stochastic episodes, seed 0", fontsize=9)
        fig.tight_layout()
        path = folder / f"{method.replace('+', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(
        len(layouts), len(methods), figsize=(2.2 * len(methods), 2.4 * len(layouts)), squeeze=False
    )
    for i, num_goals in enumerate(layouts):
        for j, method in enumerate(methods):
            if (method, num_goals) in seed0:
                _draw(axes[i, j], seed0[(method, num_goals)])
            if i == 0:
                axes[i, j].set_title(label(method), fontsize=7)
    fig.tight_layout()
    path = folder / "all_methods.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated; also the ablations {', '.join(ABLATIONS)}",
    )
    parser.add_argument("--goals", default="4,6", help="goal layouts (num_goals), comma-separated")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument("--runs-dir", default="outputs/multigoal")
    parser.add_argument("--out", default="experiments/benchmarks/results/multigoal.json")
    parser.add_argument("--figures", default="docs/multigoal")
    parser.add_argument("--quick", action="store_true", help="2k steps, seed 0, 10 episodes")
    parser.add_argument(
        "--existing",
        action="store_true",
        help="train nothing: summarize the runs of these settings already under --runs-dir "
        "(a row's seeds column says how many it has)",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.episodes = 2048, "0", 10
        args.runs_dir, args.out = "outputs/multigoal_quick", "outputs/multigoal_quick/summary.json"
        args.figures = "outputs/multigoal_quick/figures"
    methods = args.methods.split(",")
    for method in methods:  # checked before any run starts
        if method not in METHODS + ABLATIONS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHODS + ABLATIONS)}")
    tasks = [
        {
            "method": method,
            "num_goals": int(num_goals),
            "seed": int(seed),
            "steps": args.steps,
            "episodes": args.episodes,
            "path": str(Path(args.runs_dir) / method / f"goals{num_goals}" / f"seed{seed}.json"),
        }
        for num_goals in args.goals.split(",")
        for method in methods
        for seed in args.seeds.split(",")
    ]
    if args.existing:
        tasks = [task for task in tasks if _finished(task)]
        if not tasks:
            parser.error(f"no finished runs of these settings under {args.runs_dir}")
    start = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            records = pool.map(run, tasks, chunksize=1)
    else:
        records = [run(task) for task in tasks]
    rows = summarize(records)
    command = "python experiments/benchmarks/multigoal.py " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("quick", "out", "runs_dir", "figures", "jobs", "existing")
    )
    result = {
        "benchmark": "multigoal",
        "command": command,
        "settings": {
            "ppo": PPO_SETTINGS,
            "ent_coef": ENT_COEF,
            "n_envs": N_ENVS,
            "env_kwargs": ENV_KWARGS,
            "flow_policy": FLOW,
            "kl_cov": KL_COV,
            "policyflow": POLICYFLOW,
        },
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
        "machine": machine_info(("stable-baselines3", "gymnasium")),
        "code": code_version(),
    }
    write_results(result, markdown(rows, command, args.steps, args.episodes), Path(args.out))
    written = figures(records, Path(args.figures))
    print(f"wrote {args.out}, {Path(args.out).with_suffix('.md')} and {len(written)} figures")


if __name__ == "__main__":
    main()
