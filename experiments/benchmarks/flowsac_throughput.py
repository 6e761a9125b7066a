"""Env steps per second of FlowSAC against SB3's SAC at matched sizes, one run, one thread.

    .venv/bin/python experiments/benchmarks/flowsac_throughput.py          # Hopper-v5, minutes
    .venv/bin/python experiments/benchmarks/flowsac_throughput.py --quick  # smoke run, seconds

Both learners train with the same batch (256), one gradient step per env step
(``train_freq`` 1), the same critics (two ReLU MLPs of two W-wide layers, W = 256) and the
same activation; SAC's actor is two W-wide ReLU layers, FlowSAC's a residual velocity net of
width W with ``--depth`` blocks (each block two W-wide layers plus a LayerNorm), K =
``--num-steps`` Euler steps (rows ``flowsac`` and, with ``--gated``, ``flowsac_gated``) and a
64 × 64 noise net. Each learner warms up untimed (its replay buffer past ``learning_starts``),
then ``learn(--steps)`` is timed, with every ``train`` call timed inside it, so a row splits
into update time and rollout time (acting + env + replay insertion).

``breakdown`` times the pieces of one gradient step on a fixed batch: the actor's
reparameterized sample with log-probabilities (forward), the next-state sample for the
target (no gradient), the critics' forward passes (current, target, and on the actor's
actions), and the backward pass with the optimizer steps (the rest of the step).

Writes ``results/flowsac_throughput.json`` and a markdown table next to it (``--out``);
``ratio_flowsac_over_sac`` is the headline number. Compare within one run only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import code_version, machine_info, write_results
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from flowrl.algos import FlowSAC


def build(name: str, args: argparse.Namespace) -> BaseAlgorithm:
    """SAC, or FlowSAC (``flowsac`` / ``flowsac_gated``), at the shared sizes."""
    env = make_vec_env(args.env, n_envs=1, seed=args.seed)
    width = [args.width, args.width]
    common = dict(
        batch_size=args.batch_size,
        learning_starts=args.learning_starts,
        seed=args.seed,
        train_freq=1,
        gradient_steps=1,
    )
    if name == "sac":
        arch = {"net_arch": {"pi": width, "qf": width}, "activation_fn": torch.nn.ReLU}
        return SAC("MlpPolicy", env, policy_kwargs=arch, **common)
    policy_kwargs = {
        "actor_config": {
            "width": args.width,
            "depth": args.depth,
            "act": "relu",
            "gated": name == "flowsac_gated",
        },
        "num_steps": args.num_steps,
        "value_hidden": tuple(width),
        "value_act": "relu",
        "noise_hidden": (64, 64),
    }
    return FlowSAC("FlowSACPolicy", env, policy_kwargs=policy_kwargs, **common)


def breakdown(model: BaseAlgorithm, batch_size: int, repeats: int) -> dict[str, float]:
    """Milliseconds of each piece of one gradient step, on one replay minibatch."""
    data = model.replay_buffer.sample(batch_size)  # type: ignore[union-attr]
    policy = model.policy

    if isinstance(model, FlowSAC):
        sample = lambda obs: policy.action_log_prob(obs)  # noqa: E731
        q = lambda obs, a, target=False: policy.q_values(obs, a, target=target)  # noqa: E731
    else:
        sample = lambda obs: policy.actor.action_log_prob(obs)  # noqa: E731

        def q(obs: torch.Tensor, a: torch.Tensor, target: bool = False) -> Any:
            net = policy.critic_target if target else policy.critic
            return torch.cat(net(obs, a), dim=1)

    def timed(fn: Any) -> float:
        fn()  # warm
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e3 * (time.perf_counter() - start) / repeats

    def actor_forward() -> None:
        sample(data.observations)

    def next_sample() -> None:
        with torch.no_grad():
            sample(data.next_observations)

    with torch.no_grad():
        a, _ = sample(data.observations)

    def critics() -> None:
        q(data.observations, data.actions)
        q(data.observations, a)
        with torch.no_grad():
            q(data.next_observations, a, target=True)

    start = time.perf_counter()
    model.train(gradient_steps=repeats, batch_size=batch_size)
    step = 1e3 * (time.perf_counter() - start) / repeats
    pieces = {
        "actor_sample_forward_ms": timed(actor_forward),
        "target_sample_no_grad_ms": timed(next_sample),
        "critic_forwards_ms": timed(critics),
    }
    pieces["backward_and_steps_ms"] = step - sum(pieces.values())
    pieces["gradient_step_ms"] = step
    return pieces


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, time ``learn(args.steps)`` and every ``train`` call, then the breakdown."""
    model = build(name, args)
    model.learn(args.learning_starts + 64)  # untimed: fills the buffer, allocates
    calls: list[float] = []
    train = model.train

    def timed_train(*a: Any, **k: Any) -> None:
        start = time.perf_counter()
        train(*a, **k)
        calls.append(time.perf_counter() - start)

    model.train = timed_train  # type: ignore[method-assign]
    start = time.perf_counter()
    model.learn(args.steps, reset_num_timesteps=False)
    wall = time.perf_counter() - start
    model.train = train  # type: ignore[method-assign]
    update_s = sum(calls)
    return {
        "env_steps": args.steps,
        "wall_s": wall,
        "env_steps_per_s": args.steps / wall,
        "update_s": update_s,
        "rollout_s": wall - update_s,
        "update_ms_per_env_step": 1e3 * update_s / args.steps,
        "rollout_ms_per_env_step": 1e3 * (wall - update_s) / args.steps,
        "parameters": sum(p.numel() for p in model.policy.parameters()),
        "breakdown": breakdown(model, args.batch_size, args.repeats),
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per learner, then the breakdown of one gradient step."""
    s = result["settings"]
    lines = [
        f"FlowSAC vs SB3 SAC on {s['env']}: W = {s['width']}, batch {s['batch_size']}, one "
        f"gradient step per env step, FlowSAC K = {s['num_steps']} with {s['depth']} residual "
        f"block(s), ReLU everywhere, {s['steps']} timed env steps each, torch threads "
        f"{s['threads']}. Ratio: env steps/s over SAC's.",
        "",
        "| learner | env steps/s | ratio to SAC | update ms / env step | rollout ms / env step "
        "| parameters |",
        "|---|---|---|---|---|---|",
    ]
    sac = result["learners"]["sac"]["env_steps_per_s"]
    for name, r in result["learners"].items():
        lines.append(
            f"| {name} | {r['env_steps_per_s']:.0f} | {r['env_steps_per_s'] / sac:.2f} | "
            f"{r['update_ms_per_env_step']:.2f} | {r['rollout_ms_per_env_step']:.2f} | "
            f"{r['parameters']} |"
        )
    lines += [
        "",
        "One gradient step, in ms (fixed batch, mean of the repeats):",
        "",
        "| learner | actor sample (fwd) | target sample (no grad) | critic forwards "
        "| backward + optimizer steps | whole step |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["learners"].items():
        b = r["breakdown"]
        lines.append(
            f"| {name} | {b['actor_sample_forward_ms']:.2f} | {b['target_sample_no_grad_ms']:.2f} "
            f"| {b['critic_forwards_ms']:.2f} | {b['backward_and_steps_ms']:.2f} "
            f"| {b['gradient_step_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--steps", type=int, default=3000, help="timed env steps per learner")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--num-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-starts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=50, help="gradient steps per breakdown")
    parser.add_argument("--gated", action="store_true", help="also time the gated velocity")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Pendulum, tiny sizes (smoke test)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "flowsac_throughput.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.env, args.steps, args.width, args.batch_size = "Pendulum-v1", 64, 32, 32
        args.learning_starts, args.repeats = 64, 3
    torch.set_num_threads(args.threads)
    names = ["sac", "flowsac", *(["flowsac_gated"] if args.gated else [])]
    result: dict[str, Any] = {
        "machine": machine_info(("stable_baselines3", "gymnasium", "mujoco")),
        "code": code_version(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "learners": {name: measure(name, args) for name in names},
    }
    sac = result["learners"]["sac"]["env_steps_per_s"]
    result["ratio_flowsac_over_sac"] = result["learners"]["flowsac"]["env_steps_per_s"] / sac
    text = table(result)
    write_results(result, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
