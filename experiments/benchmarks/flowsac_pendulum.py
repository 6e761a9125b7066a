"""FlowSAC from scratch on Pendulum-v1: plain against gated velocity, learning curves per seed.

    .venv/bin/python experiments/benchmarks/flowsac_pendulum.py            # 3 seeds × 2, ~30 min
    .venv/bin/python experiments/benchmarks/flowsac_pendulum.py --steps 600 --seeds 0  # smoke

FlowSAC with K = ``--num-steps``, a fresh actor (width 64, one residual block, ReLU), critics
64 × 64, SB3's SAC defaults otherwise (``learning_starts`` 500), one thread. Every 2000 env
steps the deterministic policy is evaluated on 10 episodes of Pendulum-v1 reset with seed 100,
and the mean actor gradient norm of the last logged window (``flow/actor_grad_norm``) is
recorded. Writes ``results/flowsac_pendulum.json`` and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from common import code_version, machine_info, write_results
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

from flowrl.algos import FlowSAC


class Curve(BaseCallback):
    """Evaluates every ``every`` env steps and keeps (steps, return, actor gradient norm)."""

    def __init__(self, every: int, episodes: int) -> None:
        super().__init__()
        self.every, self.episodes, self.rows = every, episodes, []

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            env = gym.make("Pendulum-v1")
            env.reset(seed=100)
            mean, _ = evaluate_policy(self.model, env, n_eval_episodes=self.episodes)
            norm = self.model.logger.name_to_value.get("flow/actor_grad_norm", float("nan"))
            self.rows.append({"env_steps": self.num_timesteps, "return": mean, "grad_norm": norm})
        return True


def run(gated: bool, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One learning curve."""
    model = FlowSAC(
        "FlowSACPolicy",
        "Pendulum-v1",
        seed=seed,
        learning_starts=min(500, args.steps // 2),
        policy_kwargs=dict(
            num_steps=args.num_steps,
            actor_config=dict(width=64, depth=1, act="relu", gated=gated),
            value_hidden=(64, 64),
        ),
    )
    curve = Curve(args.every, args.episodes)
    start = time.perf_counter()
    model.learn(args.steps, callback=curve)
    return {"seed": seed, "wall_s": time.perf_counter() - start, "curve": curve.rows}


def table(result: dict[str, Any]) -> str:
    """Markdown: return per seed at each evaluation, per variant."""
    lines = [
        f"FlowSAC from scratch on Pendulum-v1, K = {result['settings']['num_steps']}: "
        "deterministic return (10 episodes) per seed at each evaluation.",
        "",
        "| variant | env steps | return per seed | actor grad norm per seed |",
        "|---|---|---|---|",
    ]
    for variant, runs in result["variants"].items():
        for i, row in enumerate(runs[0]["curve"]):
            returns = ", ".join(f"{r['curve'][i]['return']:.0f}" for r in runs)
            norms = ", ".join(f"{r['curve'][i]['grad_norm']:.2f}" for r in runs)
            lines.append(f"| {variant} | {row['env_steps']} | {returns} | {norms} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12_000)
    parser.add_argument("--every", type=int, default=2000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--num-steps", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "flowsac_pendulum.json"
    )
    args = parser.parse_args()
    args.every = min(args.every, args.steps)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict[str, Any] = {
        "machine": machine_info(("stable_baselines3", "gymnasium")),
        "code": code_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "variants": {
            name: [run(name == "gated", seed, args) for seed in seeds]
            for name in ("plain", "gated")
        },
    }
    text = table(result)
    write_results(result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
