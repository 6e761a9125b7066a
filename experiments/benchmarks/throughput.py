"""Training throughput of the on-policy flow learners against SB3 PPO, two settings, one run.

Every learner trains on the same env with the same number of DummyVecEnv copies, the same
rollout length, minibatch size, epochs, discounting and matched network widths; the script
times ``model.learn(total_timesteps)`` (rollouts + updates, model construction and an
untimed warm-up, which also compiles, excluded) and reports env steps per second, their
medians over repeats in rotating order, each learner's ratio to SB3 PPO on wall time and on
process CPU time, and where the time goes (env stepping, the rest of the rollout, the update).

Settings (``--settings``, default both):

* ``stress``: width 256, batch 64, 10 epochs (many small minibatches: per-op overhead);
* ``recipe``: the ReinFlow recipe users run (``configs/recipe/reinflow_mujoco.yaml``):
  width 128, batch 512, 5 epochs, learning rate 1e-4, gamma 0.999, GAE lambda 0.99; its
  critic warm-up and KL stop are off here, so that every timed update trains the actor
  (the most work an update can do) and all learners run every epoch.

Learners (``--learners``): ReinFlow eager and compiled (``compile=True``, torch.compile's
inductor), PolicyFlow, FPO, FPO++, DPPO and SB3 PPO.

Run from the repository root, on an otherwise idle machine::

    .venv/bin/python experiments/benchmarks/throughput.py             # Hopper-v5, ~10 minutes
    .venv/bin/python experiments/benchmarks/throughput.py --quick     # smoke run

Outputs ``experiments/benchmarks/results/throughput.json`` (``--out``) and a markdown table
the same name with ``.md`` next to it; the table is also printed. ``--changes DIR`` instead
tabulates earlier runs of this script (one JSON per code version, see
``results/throughput_changes/``) into a before/after table.
"""

from __future__ import annotations

import argparse
import json
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
from update_time import FLOW_LEARNERS

from flowrl.algos.reinflow import ReinFlow

LEARNERS = ("reinflow", "reinflow_compiled", "policyflow", "fpo", "fpo_pp", "dppo", "ppo")

COMMON: dict[str, Any] = {"env": "Hopper-v5", "n_envs": 4, "n_steps": 512, "depth": 2}
SETTINGS: dict[str, dict[str, Any]] = {
    "stress": {
        **COMMON,
        "batch_size": 64,
        "n_epochs": 10,
        "width": 256,
        "num_steps": 4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "learning_rate": 3e-4,
    },
    # configs/recipe/reinflow_mujoco.yaml (flowrl.recipes.reinflow_mujoco), without its
    # critic warm-up and KL stop (see the module docstring).
    "recipe": {
        **COMMON,
        "batch_size": 512,
        "n_epochs": 5,
        "width": 128,
        "num_steps": 4,
        "gamma": 0.999,
        "gae_lambda": 0.99,
        "learning_rate": 1e-4,
    },
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
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "learning_rate": 3e-4,
}
CLIP_RANGE = 0.2

MATCHED = [
    "env id and number of DummyVecEnv copies (each wrapped in Monitor), seed",
    "n_steps, batch_size, n_epochs, gamma, gae_lambda, clip_range, learning rate, "
    "ent_coef 0, vf_coef 0.5, max_grad_norm 0.5, advantage normalization, no target_kl "
    "(so all run every epoch)",
    "hidden width W: PPO net_arch pi=[W, W], vf=[W, W]; the flow learners actor_config "
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


class RefreshTimer:
    """Times the on-policy core's re-scoring of old log-probs before each update (mixin)."""

    timings: dict[str, float]

    def _refresh_old_log_probs(self, indices: np.ndarray) -> float:
        start = time.perf_counter()
        result = super()._refresh_old_log_probs(indices)  # type: ignore[misc]
        self.timings["refresh_s"] += time.perf_counter() - start
        return result


class TimedReinFlow(TimedMixin, RefreshTimer, ReinFlow):
    """ReinFlow with timers (also on the re-scoring of old log-probs before each update)."""


def timed(algo: type) -> type:
    """The flow learner ``algo`` with the timers."""
    return type(f"Timed{algo.__name__}", (TimedMixin, RefreshTimer, algo), {})


class TimedPPO(TimedMixin, PPO):
    """SB3 PPO with timers."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings", default="stress,recipe", help=f"comma-separated, of {sorted(SETTINGS)}"
    )
    parser.add_argument(
        "--learners", default=",".join(LEARNERS), help=f"comma-separated, of {LEARNERS}"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per learner")
    parser.add_argument(
        "--total-timesteps",
        type=int,
        help="env steps per timed learn() (default 2 rollouts: 2 * n_envs * n_steps)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="torch device of all learners")
    parser.add_argument(
        "--ppo-optimizer",
        choices=("fused", "default"),
        default="fused",
        help="PPO's Adam: fused, as the flow policies' default (matched), or SB3's default "
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
    parser.add_argument(
        "--changes",
        type=Path,
        help="tabulate the JSONs of this folder (one per code version) instead of measuring",
    )
    args = parser.parse_args(argv)
    args.settings = [x for x in args.settings.split(",") if x]
    args.learners = [x for x in args.learners.split(",") if x]
    for name in args.settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
    for name in args.learners:
        if name not in LEARNERS:
            parser.error(f"unknown learner {name!r}; choose from {LEARNERS}")
    if "ppo" not in args.learners:
        parser.error("the ratios need ppo among --learners")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def setting_values(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The values of a setting (``--quick``: tiny ones for every setting)."""
    values = dict(QUICK if args.quick else SETTINGS[name])
    values["total_timesteps"] = args.total_timesteps or 2 * values["n_envs"] * values["n_steps"]
    return values


def make_env(values: dict[str, Any], seed: int) -> TimedDummyVecEnv:
    """``n_envs`` Monitor-wrapped copies of the env, seeded like SB3's ``make_vec_env``."""

    def factory(rank: int) -> Any:
        def make() -> gym.Env:
            env = Monitor(gym.make(values["env"]))
            env.action_space.seed(seed + rank)
            return env

        return make

    venv = TimedDummyVecEnv([factory(i) for i in range(values["n_envs"])])
    venv.seed(seed)
    return venv


def common_kwargs(values: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "learning_rate": values["learning_rate"],
        "n_steps": values["n_steps"],
        "batch_size": values["batch_size"],
        "n_epochs": values["n_epochs"],
        "gamma": values["gamma"],
        "gae_lambda": values["gae_lambda"],
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


def ppo_policy_kwargs(width: int, args: argparse.Namespace) -> dict[str, Any]:
    """PPO's MlpPolicy arguments: matched width, and Adam fused unless asked otherwise."""
    kwargs: dict[str, Any] = {"net_arch": {"pi": [width] * 2, "vf": [width] * 2}}
    if args.ppo_optimizer == "fused":
        kwargs["optimizer_kwargs"] = {"fused": True}
    return kwargs


def build(name: str, values: dict[str, Any], args: argparse.Namespace) -> TimedMixin:
    """A fresh learner on its own vectorized env."""
    env, width = make_env(values, args.seed), values["width"]
    if name == "ppo":
        model: Any = TimedPPO(
            "MlpPolicy",
            env,
            policy_kwargs=ppo_policy_kwargs(width, args),
            **common_kwargs(values, args),
        )
    else:
        base = name.removesuffix("_compiled")
        algo, alias, extra = FLOW_LEARNERS[base]
        cls = TimedReinFlow if algo is ReinFlow else timed(algo)
        model = cls(
            alias,
            env,
            policy_kwargs={
                "num_steps": values["num_steps"],
                "actor_config": {"width": width, "depth": values["depth"]},
                "value_hidden": (width, width),
            },
            compile=True if name.endswith("_compiled") else None,
            **extra,
            **common_kwargs(values, args),
        )
    model.reset_timings()
    return model


def network_sizes(models: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Trainable parameter counts of each learner's networks."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    sizes = {}
    for name, model in models.items():
        policy = model.policy
        if name == "ppo":
            sizes[name] = {
                "policy_net": count(policy.mlp_extractor.policy_net)
                + count(policy.action_net)
                + policy.log_std.numel(),
                "value_net": count(policy.mlp_extractor.value_net) + count(policy.value_net),
            }
        else:
            sizes[name] = {
                "actor_side": sum(p.numel() for p in policy._actor_parameters()),
                "value_net": count(policy.value_net),
            }
    return sizes


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
    # SB3 counts epochs in PPO's _n_updates and the on-policy core counts epochs too.
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
    models: dict[str, Any], total_timesteps: int, repeats: int
) -> dict[str, list[dict[str, float]]]:
    """Rotate the learners' order every repeat to spread machine noise over them."""
    names = list(models)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        for position, name in enumerate(order):
            run = timed_learn(models[name], total_timesteps)
            run["repeat"], run["position"] = repeat, position
            runs[name].append(run)
            print(
                f"  repeat {repeat} {name:18s} {run['fps']:8.1f} steps/s "
                f"(rollout {run['rollout_s']:.2f} s, train {run['train_s']:.2f} s)",
                flush=True,
            )
    return runs


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians (and spread of fps) of every per-run number, and each learner's ratio to PPO."""
    medians: dict[str, dict[str, float]] = {}
    for name, items in runs.items():
        keys = [k for k in items[0] if k not in ("repeat", "position")]
        medians[name] = {k: float(statistics.median(r[k] for r in items)) for k in keys}
        fps = [r["fps"] for r in items]
        medians[name]["fps_min"], medians[name]["fps_max"] = min(fps), max(fps)
    ppo = medians["ppo"]
    ratios = {
        name: {"wall": m["fps"] / ppo["fps"], "cpu_time": m["fps_cpu"] / ppo["fps_cpu"]}
        for name, m in medians.items()
        if name != "ppo"
    }
    return {"median": medians, "ratio_over_ppo": ratios}


def breakdown(median: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Shares of the median wall time: env stepping, rest of rollout, update, other.

    Medians of parts need not add up to the median whole: "other" is the remainder.
    """
    shares = {}
    for name, m in median.items():
        wall = m["wall_s"]
        parts = {
            "rollout_env_step": m["rollout_env_step_s"] / wall,
            "rollout_policy_and_buffer": m["rollout_policy_and_buffer_s"] / wall,
            "train": m["train_s"] / wall,
        }
        shares[name] = {**parts, "other": 1.0 - sum(parts.values())}
    return shares


def measure_setting(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, warm up and time every learner at one setting."""
    values = setting_values(name, args)
    print(f"[{name}] building {', '.join(args.learners)} on {values['env']} ...", flush=True)
    models = {learner: build(learner, values, args) for learner in args.learners}
    warmup = values["n_envs"] * values["n_steps"]  # one rollout and one update each
    compile_s = {}
    for learner, model in models.items():
        start = time.perf_counter()
        model.learn(warmup, progress_bar=False)  # compiles the compiled learners' paths
        compile_s[learner] = time.perf_counter() - start
    print(f"[{name}] timing learn({values['total_timesteps']}) x {args.repeats}", flush=True)
    runs = run_repeats(models, values["total_timesteps"], args.repeats)
    summary = summarize(runs)
    for learner, model in models.items():
        failed = getattr(getattr(model.policy, "_compiled", None), "failed", None)
        if failed:
            raise RuntimeError(f"{learner}: compilation fell back to eager ({failed})")
    return {
        "values": values,
        "parameters": network_sizes(models),
        "warmup_s": compile_s,
        "runs": runs,
        **summary,
        "time_breakdown": breakdown(summary["median"]),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = []
    for name, block in result["settings"].items():
        v = block["values"]
        lines += [
            f"**{name}** ({v['env']}): {v['n_envs']} envs x {v['n_steps']} steps per rollout, "
            f"batch {v['batch_size']}, {v['n_epochs']} epochs, width {v['width']}, K = "
            f"{v['num_steps']}, {v['depth']} residual blocks; learn({v['total_timesteps']}) per "
            f"run, {result['repeats']} repeats in rotating order, torch threads "
            f"{result['machine']['torch_threads']}, medians.",
            "",
            "| learner | env steps/s | per run | / PPO (wall) | / PPO (CPU time) | rollout s | "
            "env step s | policy + buffer s | train s | ms / gradient step | warm-up s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for learner, m in block["median"].items():
            ratio = block["ratio_over_ppo"].get(learner)
            wall = f"**{ratio['wall']:.3f}**" if ratio else "1"
            cpu = f"{ratio['cpu_time']:.3f}" if ratio else "1"
            per_run = ", ".join(f"{r['fps']:.0f}" for r in block["runs"][learner])
            lines.append(
                f"| {learner} | {m['fps']:.0f} | {per_run} | {wall} | {cpu} | "
                f"{m['rollout_s']:.2f} | {m['rollout_env_step_s']:.2f} | "
                f"{m['rollout_policy_and_buffer_s']:.2f} | {m['train_s']:.2f} | "
                f"{m['train_ms_per_gradient_step']:.2f} | {block['warmup_s'][learner]:.1f} |"
            )
        starved = [
            f"{learner} repeat {r['repeat']}"
            for learner, items in block["runs"].items()
            for r in items
            if r["cpu_s"] < 0.9 * r["wall_s"]
        ]
        if starved:
            lines.append("")
            lines.append("Runs that got < 90 % of a CPU: " + ", ".join(starved) + ".")
        lines.append("")
    return "\n".join(lines)


def changes_table(folder: Path) -> str:
    """Before/after table of ReinFlow and PPO from one JSON per code version in ``folder``.

    Each JSON is this script's output (or the older single-setting one, with keys
    ``settings``/``median`` at the top); ``label`` in ``folder/labels.json`` names the
    versions in order.
    """
    labels = json.loads((folder / "labels.json").read_text())
    lines = [
        "| change (commit) | setting | ReinFlow env steps/s | PPO env steps/s | ratio | "
        "ReinFlow rollout policy + buffer s | ReinFlow train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in labels:
        for setting, path in item["files"].items():
            data = json.loads((folder / path).read_text())
            block = (
                data["settings"][setting] if "values" in data["settings"].get(setting, {}) else data
            )
            learner = item.get("learner", "reinflow")
            rf, ppo = block["median"][learner], block["median"]["ppo"]
            lines.append(
                f"| {item['label']} ({item['commit']}) | {setting} | {rf['fps']:.0f} | "
                f"{ppo['fps']:.0f} | {rf['fps'] / ppo['fps']:.3f} | "
                f"{rf['rollout_policy_and_buffer_s']:.2f} | {rf['train_s']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.changes is not None:
        table = changes_table(args.changes)
        (args.changes / "changes.md").write_text(table)
        print(table)
        return None
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    settings = {name: measure_setting(name, args) for name in args.settings}
    result = {
        "what": "env steps per second of model.learn(total_timesteps): rollouts + updates, "
        "model construction and warm-up (compilation included) excluded",
        "machine": {
            **machine_info(("stable_baselines3", "gymnasium", "mujoco")),
            "torch_threads": args.threads,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "code": code_version(),
        "repeats": args.repeats,
        "device": args.device,
        "seed": args.seed,
        "quick": args.quick,
        "ppo_optimizer": args.ppo_optimizer,
        "matched": MATCHED,
        "differs": DIFFERS,
        "settings": settings,
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
