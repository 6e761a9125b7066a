"""Wall time per update across learners: every on-policy flow learner, SB3 PPO and SAC, one run.

    .venv/bin/python experiments/benchmarks/update_time.py          # Hopper-v5, a few minutes
    .venv/bin/python experiments/benchmarks/update_time.py --quick  # smoke run, seconds
    .venv/bin/python experiments/benchmarks/update_time.py --learners reinflow,dppo:20:10

Every learner trains for the same number of env steps after an untimed warm-up, with the
same hidden width W (PPO and SAC: two W-wide layers per network; the flow learners —
ReinFlow, PolicyFlow, FPO, FPO++, NFT, DPPO — a residual velocity (DPPO: noise) net of width W
with ``--depth`` blocks, K = ``--num-steps``, and a W × W value net; DPPO fine-tunes all K
steps) and one torch thread. ``dppo:K:K′`` adds a DPPO row at its own K and K′ (the DPPO
paper's Gym setting is 20 and 10, against ReinFlow's K = 4). The instance's ``train`` (the
update) is wrapped in a timer, so the result separates:

* ``update_ms``: mean wall time of one call of ``train`` — for the on-policy learners one
  update after a rollout (``n_epochs`` passes over ``n_steps`` samples), for SAC one
  gradient step per env step (``train_freq`` 1);
* ``ms_per_gradient_step``: update time per optimizer step (minibatch);
* ``update_s_per_1k_env_steps`` and ``env_steps_per_s``: what the learner costs per unit
  of experience, updates and rollouts together.

Writes ``results/update_time.json`` and a markdown table next to it (``--out``). Compare
learners within one run; the numbers of separate runs on a shared machine move by ±20 %.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import code_version, machine_info, write_results
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from flowrl.algos import DPPO, FPO, NFT, PolicyFlow, ReinFlow

LEARNERS = ("reinflow", "policyflow", "fpo", "fpo_pp", "nft", "dppo", "ppo", "sac")
# The flow learners: algorithm, policy alias, and their own arguments.
FLOW_LEARNERS: dict[str, tuple[type[BaseAlgorithm], str, dict[str, Any]]] = {
    "reinflow": (ReinFlow, "FlowPolicy", {}),
    "policyflow": (PolicyFlow, "PolicyFlowPolicy", {}),
    "fpo": (FPO, "FPOPolicy", {}),
    "fpo_pp": (FPO, "FPOPolicy", {"variant": "fpo++"}),
    "nft": (NFT, "FPOPolicy", {}),
    "dppo": (DPPO, "DiffusionPolicy", {}),
}


def build(name: str, args: argparse.Namespace) -> BaseAlgorithm:
    """One learner at the shared settings (``dppo:K:K′``: DPPO at its own K and K′)."""
    env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    width = [args.width, args.width]
    on_policy = {"n_steps": args.n_steps, "batch_size": args.batch_size, "n_epochs": args.n_epochs}
    base, *steps = name.split(":")
    if base in FLOW_LEARNERS:
        algo, alias, extra = FLOW_LEARNERS[base]
        policy_kwargs: dict[str, Any] = {
            "actor_config": {"width": args.width, "depth": args.depth},
            "num_steps": int(steps[0]) if steps else args.num_steps,
            "value_hidden": tuple(width),
        }
        if base == "dppo" and len(steps) == 2:
            policy_kwargs["ft_denoising_steps"] = int(steps[1])
        elif steps and base != "dppo" or len(steps) > 2:
            raise ValueError(f"{name!r}: only dppo takes :K or :K:K′")
        return algo(alias, env, policy_kwargs=policy_kwargs, seed=args.seed, **on_policy, **extra)
    if name == "ppo":
        arch = {"net_arch": {"pi": width, "vf": width}}
        return PPO("MlpPolicy", env, policy_kwargs=arch, seed=args.seed, **on_policy)
    if name == "sac":
        return SAC(
            "MlpPolicy",
            env,
            policy_kwargs={"net_arch": width},
            batch_size=args.sac_batch_size,
            learning_starts=args.sac_learning_starts,
            seed=args.seed,
        )
    raise ValueError(f"unknown learner {name!r}; choose from {LEARNERS} (or dppo:K:K′)")


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then time ``learn(args.steps)`` and every ``train`` call inside it."""
    model = build(name, args)
    warmup = max(args.n_steps, args.sac_learning_starts + 1) if name == "sac" else args.n_steps
    model.learn(warmup)  # untimed: SAC fills its first batch, everyone allocates
    calls: list[float] = []
    train = model.train

    def timed_train(*a: Any, **k: Any) -> None:
        start = time.perf_counter()
        train(*a, **k)
        calls.append(time.perf_counter() - start)

    model.train = timed_train  # type: ignore[method-assign]
    updates_before = model._n_updates
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    wall = time.perf_counter() - start
    gradient_steps = model._n_updates - updates_before
    if name != "sac":
        # SB3's on-policy learners (and ReinFlow, following them) count epochs in _n_updates;
        # every epoch takes ceil(n_steps / batch_size) minibatch steps (one env, no KL stop).
        gradient_steps *= -(-args.n_steps // args.batch_size)
    update_s = sum(calls)
    return {
        "env_steps": args.steps,
        "wall_s": wall,
        "update_calls": len(calls),
        "update_s": update_s,
        "update_ms": 1e3 * update_s / max(len(calls), 1),
        "gradient_steps": int(gradient_steps),
        "ms_per_gradient_step": 1e3 * update_s / max(gradient_steps, 1),
        "update_s_per_1k_env_steps": 1e3 * update_s / args.steps,
        "env_steps_per_s": args.steps / wall,
        "parameters": sum(p.numel() for p in model.policy.parameters()),
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per learner."""
    s = result["settings"]
    lines = [
        f"Wall time per update on {s['env']}: W = {s['width']}, on-policy n_steps {s['n_steps']}, "
        f"batch {s['batch_size']}, {s['n_epochs']} epochs (flow learners K = {s['num_steps']}, "
        f"{s['depth']} residual blocks); SAC batch {s['sac_batch_size']}, one gradient step per "
        f"env step; {s['steps']} timed env steps each, torch threads {s['threads']}. "
        "Update ratio: this learner's update time over the first DPPO row's.",
        "",
        "| learner | update (ms) | update ratio to DPPO | gradient steps | ms / gradient step "
        "| update s / 1k env steps | env steps/s | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["learners"].items():
        ratio = r.get("update_ratio_to_dppo")
        lines.append(
            f"| {name} | {r['update_ms']:.1f} | {'n/a' if ratio is None else f'{ratio:.2f}'} | "
            f"{r['gradient_steps']} | {r['ms_per_gradient_step']:.2f} | "
            f"{r['update_s_per_1k_env_steps']:.2f} | {r['env_steps_per_s']:.0f} | "
            f"{r['parameters']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--learners", default=",".join(LEARNERS))
    parser.add_argument("--steps", type=int, default=4096, help="timed env steps per learner")
    parser.add_argument("--n-steps", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--num-steps", type=int, default=4)
    parser.add_argument("--sac-batch-size", type=int, default=256)
    parser.add_argument("--sac-learning-starts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Pendulum, tiny sizes (smoke test)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "update_time.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.env, args.steps, args.n_steps, args.batch_size = "Pendulum-v1", 128, 64, 32
        args.n_epochs, args.width, args.sac_batch_size, args.sac_learning_starts = 2, 32, 32, 64
    torch.set_num_threads(args.threads)
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    result: dict[str, Any] = {
        "machine": machine_info(("stable_baselines3", "gymnasium", "mujoco")),
        "code": code_version(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "learners")},
        "learners": {name: measure(name, args) for name in learners},
    }
    dppo = next((r for n, r in result["learners"].items() if n.startswith("dppo")), None)
    for r in result["learners"].values():
        r["update_ratio_to_dppo"] = None if dppo is None else r["update_ms"] / dppo["update_ms"]
    text = table(result)
    write_results(result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
