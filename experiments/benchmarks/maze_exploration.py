"""Reward-free exploration of PointMaze, then fine-tuning to reach the goal cell.

    cd experiments/benchmarks
    # one run (writes <out>/explore/<maze>_<method>_s<seed>.json/.npz):
    ../../.venv/bin/python maze_exploration.py explore --maze umaze --method edp --seed 0
    # fine-tuning from the EDP run's pretrained flow (needs that explore run):
    ../../.venv/bin/python maze_exploration.py finetune --maze umaze --method edp --seed 0
    # tables, JSON and plots from all runs found:
    ../../.venv/bin/python maze_exploration.py summarize

Exploration (``explore``): ``--steps`` env steps without reward in ``flowrl/PointMaze-<Maze>-v0``
(fixed start in the top-left free cell, episodes of 300/600/800 steps). Methods:

* ``edp``: :class:`~flowrl.algos.EDPExplore` (SAC behaviour policy on the score intrinsic
  reward; π_pre fitted alongside and saved for fine-tuning);
* ``rnd``: the same SAC agent on a random-network-distillation reward;
* ``count``: the same SAC agent on a count bonus 1/√N over cells of width ``--bin-width`` of
  the raw observation (x, y, vx, vy);
* ``random``: uniform random actions.

All agents: SB3 SAC defaults except nets 128 × 128, one gradient step every 4 env steps
(``train_freq`` 4), batch 256, 2000 uniform warm-up steps, one thread. Coverage (share of free
cells visited) and the normalized visitation entropy are recorded every 1000 env steps by
:class:`flowrl.callbacks.CoverageCallback`.

Fine-tuning (``finetune``): ``flowrl/PointMazeGoal-<Maze>-v0`` (sparse reward 1 and termination
on reaching the goal cell). Methods: ``edp`` (:class:`~flowrl.algos.EDP` from the EDP run's
π_pre of the same seed), ``dsrl`` (:class:`~flowrl.algos.DSRL` on that π_pre), ``flowsac``
(:class:`~flowrl.algos.FlowSAC` from scratch). Every ``--eval-every`` env steps the
deterministic policy runs 10 episodes; success = reached the goal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import code_version, machine_info, write_results
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

import flowrl.envs  # noqa: F401  (registers the mazes)
from flowrl.algos import DSRL, EDP, EDPExplore, ExplorationSAC, FlowSAC
from flowrl.algos.exploration import wrap_reward_free
from flowrl.callbacks import CoverageCallback
from flowrl.envs.maze import maze_layout, plot_visits
from flowrl.policies import FlowActor

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "maze_exploration"
ENV_IDS = {"umaze": "UMaze", "medium": "Medium", "large": "Large"}
METHODS = ("edp", "rnd", "count", "random")
FT_METHODS = ("edp", "dsrl", "flowsac")
NET = [128, 128]


def explore_agent(method: str, env_id: str, seed: int, args: argparse.Namespace) -> Any:
    common: dict[str, Any] = dict(
        learning_starts=2000,
        batch_size=256,
        train_freq=4,
        gradient_steps=1,
        buffer_size=args.steps,
        policy_kwargs=dict(net_arch=NET),
        seed=seed,
    )
    if method == "edp":
        return EDPExplore(
            "MlpPolicy",
            env_id,
            intrinsic_kwargs=dict(num_draws=args.num_draws, width=128, depth=2),
            actor_config=dict(width=128, depth=2, num_steps=8),
            **common,
        )
    if method == "rnd":
        return ExplorationSAC("MlpPolicy", env_id, intrinsic="rnd", **common)
    if method == "count":
        return ExplorationSAC(
            "MlpPolicy",
            env_id,
            intrinsic="count",
            intrinsic_kwargs=dict(bin_width=args.bin_width),
            **common,
        )
    if method == "random":  # SAC's warm-up is uniform actions; it never trains
        common["learning_starts"] = args.steps + 1
        return SAC("MlpPolicy", wrap_reward_free(gym.make(env_id)), **common)
    raise ValueError(f"unknown method {method!r}")


def run_explore(args: argparse.Namespace) -> None:
    env_id = f"flowrl/PointMaze-{ENV_IDS[args.maze]}-v0"
    torch.set_num_threads(1)
    agent = explore_agent(args.method, env_id, args.seed, args)
    coverage = CoverageCallback(args.maze, log_freq=1000)
    start = time.time()
    agent.learn(args.steps, callback=coverage)
    wall = time.time() - start
    out = Path(args.out) / "explore"
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.maze}_{args.method}_s{args.seed}"
    final = coverage.coverage()
    record = dict(
        maze=args.maze,
        method=args.method,
        seed=args.seed,
        steps=args.steps,
        wall_s=round(wall, 1),
        cells=final["cells"],
        entropy_normalized=final["entropy_normalized"],
        history=coverage.history,
        num_draws=args.num_draws if args.method == "edp" else None,
        bin_width=args.bin_width if args.method == "count" else None,
        code=code_version(("flowrl", "envs")),
    )
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    points = coverage.points()
    np.savez_compressed(stem.with_suffix(".npz"), xy=points[:: max(1, len(points) // 20000)])
    if args.method == "edp":
        agent.save_pretrained(str(stem) + "_prior.pt")
    print(
        f"{args.maze} {args.method} seed {args.seed}: cells {final['cells']:.3f} "
        f"entropy {final['entropy_normalized']:.3f} in {wall:.0f} s"
    )


# ---------------------------------------------------------------------- fine-tuning


class SuccessCurve(BaseCallback):
    """Every ``every`` env steps: share of 10 deterministic episodes that reach the goal."""

    def __init__(self, env_id: str, every: int, episodes: int = 10) -> None:
        super().__init__()
        self.env_id, self.every, self.episodes, self.rows = env_id, every, episodes, []

    def evaluate(self) -> None:
        """Run the deterministic policy for ``episodes`` episodes and append a row."""
        env = gym.make(self.env_id)
        successes = 0
        for episode in range(self.episodes):
            obs, _ = env.reset(seed=1000 + episode)
            done = False
            while not done:
                action, _ = self.model.predict(obs, deterministic=True)
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            successes += bool(info.get("is_success", False))
        self.rows.append(dict(timesteps=self.num_timesteps, success=successes / self.episodes))

    def _on_training_start(self) -> None:
        self.evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            self.evaluate()
        return True


def finetune_agent(method: str, env_id: str, prior: FlowActor | None, seed: int) -> Any:
    common: dict[str, Any] = dict(batch_size=256, seed=seed, learning_starts=1000)
    if method == "edp":
        return EDP(
            "EDPPolicy",
            env_id,
            policy_kwargs=dict(pretrained=prior, value_hidden=tuple(NET)),
            beta=0.01,
            num_candidates=16,
            distill_batch_size=64,
            **common,
        )
    if method == "dsrl":
        return DSRL("MlpPolicy", env_id, actor=prior, policy_kwargs=dict(net_arch=NET), **common)
    if method == "flowsac":
        return FlowSAC(
            "FlowSACPolicy",
            env_id,
            policy_kwargs=dict(
                actor_config=dict(width=128, depth=2, num_steps=4), value_hidden=tuple(NET)
            ),
            **common,
        )
    raise ValueError(f"unknown method {method!r}")


def run_finetune(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    env_id = f"flowrl/PointMazeGoal-{ENV_IDS[args.maze]}-v0"
    prior_path = Path(args.out) / "explore" / f"{args.maze}_edp_s{args.seed}_prior.pt"
    prior = FlowActor.load(prior_path) if args.method != "flowsac" else None
    agent = finetune_agent(args.method, env_id, prior, args.seed)
    curve = SuccessCurve(env_id, args.eval_every)
    start = time.time()
    agent.learn(args.steps, callback=curve)
    out = Path(args.out) / "finetune"
    out.mkdir(parents=True, exist_ok=True)
    record = dict(
        maze=args.maze,
        method=args.method,
        seed=args.seed,
        steps=args.steps,
        wall_s=round(time.time() - start, 1),
        curve=curve.rows,
        code=code_version(("flowrl", "envs")),
    )
    path = out / f"{args.maze}_{args.method}_s{args.seed}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.maze} {args.method} seed {args.seed}: {curve.rows}")


# ---------------------------------------------------------------------- summary


CHECKPOINTS = (5000, 10000, 20000)


def _cells_at(run: dict[str, Any], steps: int) -> float:
    """Coverage of the last history row at or before ``steps`` env steps."""
    rows = [h for h in run["history"] if h["timesteps"] <= steps]
    return float(rows[-1]["cells"]) if rows else float("nan")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarize(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = [json.loads(p.read_text()) for p in sorted((out / "explore").glob("*.json"))]
    table: dict[str, dict[str, Any]] = {}
    lines = [
        "| maze | method | seeds | env steps | cells at 5k | cells at 10k | cells at 20k | cells "
        "at the end | visitation entropy (norm.), end | mean cells over the run | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for maze in ENV_IDS:
        for method in METHODS:
            rows = [r for r in runs if r["maze"] == maze and r["method"] == method]
            if not rows:
                continue
            cells = [r["cells"] for r in rows]
            ent = [r["entropy_normalized"] for r in rows]
            at = {k: [_cells_at(r, k) for r in rows] for k in CHECKPOINTS}
            auc = [float(np.mean([h["cells"] for h in r["history"]])) for r in rows]
            c_mean, c_std = _mean_std(cells)
            e_mean, e_std = _mean_std(ent)
            table.setdefault(maze, {})[method] = dict(
                seeds=[r["seed"] for r in rows],
                steps=rows[0]["steps"],
                cells=cells,
                cells_mean=c_mean,
                cells_std=c_std,
                cells_at={str(k): v for k, v in at.items()},
                mean_cells_over_run=auc,
                entropy_normalized=ent,
                entropy_mean=e_mean,
                entropy_std=e_std,
                wall_s=[r["wall_s"] for r in rows],
            )
            fmt = lambda xs: "{:.2f} ± {:.2f}".format(*_mean_std(xs))  # noqa: E731
            lines.append(
                f"| {maze} | {method} | {len(rows)} | {rows[0]['steps']} | "
                + " | ".join(fmt(at[k]) for k in CHECKPOINTS)
                + f" | {fmt(cells)} | {fmt(ent)} | {fmt(auc)} | "
                f"{np.mean([r['wall_s'] for r in rows]) / 60:.1f} |"
            )
    ft_runs = [json.loads(p.read_text()) for p in sorted((out / "finetune").glob("*.json"))]
    ft: dict[str, dict[str, Any]] = {}
    ft_lines = [
        "",
        "| maze | method | seeds | success at env steps (mean over seeds) |",
        "|---|---|---|---|",
    ]
    for maze in ENV_IDS:
        for method in FT_METHODS:
            rows = [r for r in ft_runs if r["maze"] == maze and r["method"] == method]
            if not rows:
                continue
            steps = [c["timesteps"] for c in rows[0]["curve"]]
            success = np.array([[c["success"] for c in r["curve"]] for r in rows])
            ft.setdefault(maze, {})[method] = dict(
                seeds=[r["seed"] for r in rows],
                timesteps=steps,
                success=success.tolist(),
                success_mean=success.mean(axis=0).tolist(),
            )
            cells = ", ".join(
                f"{s // 1000}k: {m:.2f}" for s, m in zip(steps, success.mean(axis=0), strict=True)
            )
            ft_lines.append(f"| {maze} | {method} | {len(rows)} | {cells} |")
    result = dict(
        benchmark="maze_exploration",
        exploration=table,
        finetune=ft,
        machine=machine_info(("torch", "stable_baselines3", "gymnasium_robotics", "mujoco")),
        code=code_version(("flowrl", "envs")),
        command="experiments/benchmarks/maze_exploration.py (explore, finetune per run; summarize)",
    )
    write_results(result, "\n".join(lines + ft_lines) + "\n", out.parent / "maze_exploration.json")
    _plots(out, runs)
    print("\n".join(lines + ft_lines))


def _plots(out: Path, runs: list[dict[str, Any]]) -> None:
    """Visited positions of seed 0: one PNG per maze and method, and all of them in a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[tuple[str, str], Path] = {}
    for maze in ENV_IDS:
        for method in METHODS:
            path = out / "explore" / f"{maze}_{method}_s0.npz"
            run = [
                r for r in runs if r["maze"] == maze and r["method"] == method and r["seed"] == 0
            ]
            if path.exists() and run:
                made[maze, method] = plot_visits(
                    np.load(path)["xy"],
                    maze_layout(maze),
                    out / f"visits_{maze}_{method}.png",
                    title=f"{maze}, {method}, seed 0: {run[0]['cells']:.2f} of cells, "
                    f"H/Hmax {run[0]['entropy_normalized']:.2f}",
                )
    mazes = [m for m in ENV_IDS if any((m, k) in made for k in METHODS)]
    if not mazes:
        return
    fig, axes = plt.subplots(
        len(mazes), len(METHODS), figsize=(4 * len(METHODS), 3.2 * len(mazes)), squeeze=False
    )
    for i, maze in enumerate(mazes):
        for j, method in enumerate(METHODS):
            ax = axes[i][j]
            ax.axis("off")
            if (maze, method) in made:
                ax.imshow(plt.imread(made[maze, method]))
    fig.tight_layout()
    fig.savefig(out.parent / "maze_exploration.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("explore", "finetune", "summarize"):
        p = sub.add_parser(name)
        p.add_argument("--out", default=str(DEFAULT_OUT))
        if name == "summarize":
            continue
        p.add_argument("--maze", choices=list(ENV_IDS), default="umaze")
        p.add_argument("--seed", type=int, default=0)
        if name == "explore":
            p.add_argument("--method", choices=METHODS, default="edp")
            p.add_argument("--steps", type=int, default=20_000)
            p.add_argument("--num-draws", type=int, default=8)
            p.add_argument("--bin-width", type=float, default=0.5)
        else:
            p.add_argument("--method", choices=FT_METHODS, default="edp")
            p.add_argument("--steps", type=int, default=20_000)
            p.add_argument("--eval-every", type=int, default=2500)
    args = parser.parse_args()
    {"explore": run_explore, "finetune": run_finetune, "summarize": summarize}[args.command](args)


if __name__ == "__main__":
    main()
