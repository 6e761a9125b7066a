"""BOSS (Bellman-optimal step sizes + straightening, arXiv 2312.16414) on digits and Hopper.

Two parts, each optional:

* ``digits`` — the CFG flow teacher of ``experiments/generators.py`` (its checkpoint, config
  and ``Evaluator``): FD / class accuracy at K = 2, 4, 8 for the uniform grid, the BOSS
  grid, and the BOSS grid after straightening; the sCD and rCM students at 1/2/4 steps
  (their own sampler) when their checkpoints exist, else the pipeline's reference numbers.
* ``hopper`` — a BC flow actor (``FlowActor`` checkpoint) on Hopper-v5: deterministic return
  at K = 1, 2, 4 with the uniform vs the BOSS grid (computed on the actor's velocity over
  dataset observations, from the deterministic start a⁰ = 0), through ``FlowPolicy``.

Writes ``<out>/boss_results.json``, ``<out>/boss_results.md`` and ``<out>/boss.png``.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/boss.py --parts digits hopper
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowrl.flow.boss import bellman_grid, local_error_costs, reference_trajectory
from flowrl.flow.times import TimeGrid
from flowrl.generative.boss import (
    BossConfig,
    BossTrainer,
    boss_reference,
    teacher_velocity,
)

STUDENT_STEPS = (1, 2, 4)


# ---------------------------------------------------------------------- digits


def _generators_config(gen_dir: Path) -> Any:
    """The pipeline's config of that run (its Hydra record over the schema's defaults)."""
    from omegaconf import OmegaConf

    from flowrl.experiments.generators import GeneratorsConfig

    schema = OmegaConf.structured(GeneratorsConfig)
    saved = gen_dir / ".hydra" / "config.yaml"
    if saved.exists():
        schema = OmegaConf.merge(schema, OmegaConf.load(saved))
    schema.output_dir = str(gen_dir)
    return OmegaConf.to_object(schema)


def run_digits(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """BOSS on the digits CFG teacher; returns the section of the results."""
    from flowrl.experiments.generators import Evaluator, load_data, make_net
    from flowrl.generative.trainer import DistillTrainer, TeacherTrainer
    from flowrl.generative.visualize import save_comparison

    gen_dir = Path(args.gen_dir)
    work = Path(args.work_dir) / "digits"
    work.mkdir(parents=True, exist_ok=True)
    cfg = _generators_config(gen_dir)
    data, labels = load_data(cfg.data)
    torch.manual_seed(cfg.teacher.seed)
    teacher = TeacherTrainer(make_net(cfg.model, data, labels), data, labels, cfg.teacher, None)
    teacher.load_checkpoint(gen_dir / "teacher" / "checkpoint.pt")
    net = teacher.teacher.eval()
    guidance = float(cfg.teacher.guidance)
    n, seed = cfg.evaluate.num_samples, cfg.evaluate.seed
    print(f"digits: teacher step {teacher.step}, guidance {guidance}, {n} samples", flush=True)
    evaluator = Evaluator(cfg, data, labels)
    rows: list[dict[str, Any]] = []
    panels: dict[str, torch.Tensor] = {}

    def record(model: str, grid: str, steps: int, samples: torch.Tensor, **extra: Any) -> None:
        row = {"model": model, "grid": grid, "steps": steps, **evaluator.metrics(samples), **extra}
        rows.append(row)
        if steps == args.picture_steps and (model, grid) != ("teacher+straightening", "uniform"):
            panels[f"{model}, {grid}, K={steps}"] = samples[:40]
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print("  ", shown, flush=True)

    # Reference trajectories of the guided teacher through the candidate times (cached).
    ref_path = work / f"reference_N{args.candidates}_M{args.ref_noises}.pt"
    gen = torch.Generator().manual_seed(args.ref_seed)
    noise = torch.randn((args.ref_noises, *data.shape[1:]), generator=gen)
    ref_labels = torch.arange(args.ref_noises) % (int(labels.max()) + 1)
    start = time.perf_counter()
    if ref_path.exists():
        trajectory = torch.load(ref_path, weights_only=True)
    else:
        with torch.no_grad():
            trajectory = boss_reference(
                net, noise, ref_labels, args.candidates, guidance=guidance, method="heun"
            )
        torch.save(trajectory, ref_path)
    ref_seconds = time.perf_counter() - start
    dp = args.dp_noises
    start = time.perf_counter()
    costs = local_error_costs(
        teacher_velocity(net, ref_labels[:dp], guidance),
        trajectory[:, :dp],
        args.candidates,
        metric=args.metric,
    )
    cost_seconds = time.perf_counter() - start
    print(f"  reference {ref_seconds:.0f} s, costs {cost_seconds:.0f} s", flush=True)

    grids: dict[int, Any] = {}
    for K in args.digit_steps:
        result = bellman_grid(
            None,  # type: ignore[arg-type]
            noise[:dp],
            K,
            args.candidates,
            trajectory=trajectory[:, :dp],
            costs=costs,
        )
        grids[K] = result
        print(f"  K={K}: {result.grid} cost {result.cost:.4g} (uniform {result.uniform_cost})")

    for K in args.digit_steps:
        for name, grid in (("uniform", K), ("boss", grids[K].grid)):
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            with torch.no_grad():
                samples = teacher.sample(n, num_steps=grid, y=evaluator.labels, guidance=guidance)
            record("teacher", name, K, samples, seconds=time.perf_counter() - t0)

    straighten: dict[str, Any] = {}
    variants = ["boss", "uniform"] if args.straighten_uniform else ["boss"]
    for K in args.digit_steps if args.straighten_steps > 0 else ():
        for variant in variants:
            if variant == "boss":
                indices, grid = list(grids[K].indices), grids[K].grid
                folder = (
                    f"straighten_K{K}" if args.metric == "l2" else f"straighten_{args.metric}_K{K}"
                )
            else:  # the control: the same fine-tune on the uniform grid
                indices = [k * args.candidates // K for k in range(K + 1)]
                grid = TimeGrid.uniform(K)
                folder = f"straighten_uniform_K{K}"
            states = trajectory[indices].transpose(0, 1).contiguous()
            config = BossConfig(
                steps=args.straighten_steps,
                batch_size=args.straighten_batch,
                lr=args.straighten_lr,
                guidance=guidance,
                seed=0,
                log_interval=50,
            )
            trainer = BossTrainer(net, grid, states, ref_labels, config, work / folder)
            timing = work / folder / "train_seconds.json"
            t0 = time.perf_counter()
            trainer.fit(progress_bar=False, tensorboard=False)
            seconds = time.perf_counter() - t0
            if trainer.resumed_from is None or trainer.resumed_from < config.steps:
                timing.write_text(json.dumps({"seconds": seconds}))
            losses = [h["loss"] for h in trainer.history]
            straighten[f"{variant}_K{K}"] = {
                "grid": variant,
                "steps": trainer.step,
                "train_seconds": json.loads(timing.read_text())["seconds"]
                if timing.exists()
                else seconds,
                "loss_first_50": float(np.mean(losses[:50])) if losses else None,
                "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
            }
            torch.manual_seed(seed)
            with torch.no_grad():
                samples = trainer.sample(n, y=evaluator.labels)
            record("teacher+straightening", variant, K, samples)

    students: dict[str, Any] = {}
    for stage in ("scd", "rcm") if args.students else ():
        checkpoint = gen_dir / stage / "checkpoint.pt"
        if not checkpoint.exists():
            students[stage] = "checkpoint missing: see reference_rows"
            continue
        trainer = DistillTrainer(net, data, labels, getattr(cfg, stage), None)
        trainer.load_checkpoint(checkpoint)
        if trainer.step < trainer.config.steps:  # still training: an intermediate checkpoint
            students[stage] = (
                f"checkpoint missing: {checkpoint} is at step {trainer.step} of "
                f"{trainer.config.steps} (still training); see reference_rows"
            )
            continue
        students[stage] = f"{checkpoint} (step {trainer.step})"
        for steps in STUDENT_STEPS:
            torch.manual_seed(seed)
            with torch.no_grad():
                samples = trainer.sample(n, num_steps=steps, y=evaluator.labels)
            record(stage, "uniform", steps, samples)
    reference_rows = []
    pipeline = Path(args.reference_results)
    if pipeline.exists() and any(isinstance(v, str) and "missing" in v for v in students.values()):
        reference_rows = [
            r for r in json.loads(pipeline.read_text())["rows"] if r["model"] in ("scd", "rcm")
        ]
    if panels:
        save_comparison(
            panels, out / ("boss.png" if args.metric == "l2" else f"boss_{args.metric}.png")
        )
    return {
        "gen_dir": str(gen_dir),
        "teacher_step": teacher.step,
        "guidance": guidance,
        "num_samples": n,
        "eval_seed": seed,
        "candidates": args.candidates,
        "metric": args.metric,
        "reference": {
            "noises": args.ref_noises,
            "dp_noises": dp,
            "method": "heun",
            "seconds": ref_seconds,
            "cost_seconds": cost_seconds,
        },
        "grids": {str(K): r.to_dict() for K, r in grids.items()},
        "straightening": straighten,
        "students": students,
        "rows": rows,
        "data_floor": evaluator.floor,
        "reference_rows": reference_rows,
        "reference_rows_source": str(pipeline) if reference_rows else None,
    }


# ---------------------------------------------------------------------- hopper


def run_hopper(args: argparse.Namespace) -> dict[str, Any]:
    """Uniform vs BOSS grid of a BC flow actor on Hopper-v5; returns the section."""
    import gymnasium as gym
    from pretrain import data_file

    from flowrl.policies import FlowPolicy
    from flowrl.policies.flow_actor import FlowActor

    actor = FlowActor.load(args.hopper_actor)
    if actor.config.shortcut:
        raise ValueError(
            f"{args.hopper_actor} is a shortcut actor: BOSS grids are non-uniform, which a "
            "shortcut actor cannot sample; pass a plain BC actor"
        )
    actor.eval()
    dataset = np.load(data_file(args.hopper_dataset))
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(
        dataset["observations"][rng.choice(len(dataset["observations"]), args.hopper_obs)],
        dtype=torch.float32,
    )
    obs_n = actor.normalize_obs(obs)
    velocity = actor.velocity_fn(obs_n, 1)
    a0 = torch.zeros(len(obs), actor.config.action_dim)  # the deterministic start
    trajectory = reference_trajectory(velocity, a0, args.candidates, substeps=4, method="heun")
    costs = local_error_costs(velocity, trajectory, args.candidates)
    env = gym.make(args.hopper_env)
    grids: dict[int, Any] = {}
    rows: list[dict[str, Any]] = []
    for K in args.hopper_steps:
        result = bellman_grid(None, a0, K, args.candidates, trajectory=trajectory, costs=costs)  # type: ignore[arg-type]
        grids[K] = result
        print(f"hopper K={K}: {result.grid} cost {result.cost:.4g} (uniform {result.uniform_cost})")
        variants = [("uniform", K)] + ([("boss", result.grid)] if K > 1 else [])
        for name, grid in variants:
            policy = FlowPolicy.from_pretrained(
                actor, env.observation_space, env.action_space, num_steps=grid
            )
            policy.set_training_mode(False)
            per_seed, lengths = [], []
            t0 = time.perf_counter()
            for seed in args.hopper_seeds:
                returns = []
                for episode in range(args.hopper_episodes):
                    o, _ = env.reset(seed=1000 * seed + episode)
                    total, done, steps = 0.0, False, 0
                    while not done:
                        action, _ = policy.predict(o, deterministic=True)
                        o, reward, terminated, truncated, _ = env.step(action)
                        total += float(reward)
                        steps += 1
                        done = terminated or truncated
                    returns.append(total)
                    lengths.append(steps)
                per_seed.append(returns)
            flat = np.array(per_seed).ravel()
            seed_means = np.array(per_seed).mean(axis=1)
            row = {
                "grid": name,
                "steps": K,
                "knots": TimeGrid.uniform(K).to_list() if name == "uniform" else grid.to_list(),
                "return_mean": float(flat.mean()),
                "return_std_episodes": float(flat.std()),
                "return_std_seed_means": float(seed_means.std()),
                "seed_means": [float(x) for x in seed_means],
                "length_mean": float(np.mean(lengths)),
                "episodes": int(flat.size),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print("  ", {k: v for k, v in row.items() if k != "knots"}, flush=True)
    return {
        "actor": str(args.hopper_actor),
        "actor_config": {"num_steps": actor.config.num_steps, "shortcut": actor.config.shortcut},
        "dataset": args.hopper_dataset,
        "env": args.hopper_env,
        "candidates": args.candidates,
        "reference": "a0 = 0 (the deterministic start), Heun with 4 substeps per candidate",
        "observations": args.hopper_obs,
        "grids": {str(K): r.to_dict() for K, r in grids.items()},
        "rows": rows,
    }


# ---------------------------------------------------------------------- report


def _digits_markdown(digits: dict[str, Any], key: str) -> list[str]:
    """One digits section of ``boss_results.md`` (``key``: ``digits`` or ``digits_<metric>``)."""
    floor = digits["data_floor"]
    lines = [
        f"## {key}: CFG teacher, guidance {digits['guidance']}, {digits['num_samples']} "
        f"samples per row, eval seed {digits['eval_seed']}",
        "",
        f"Data-vs-data floor: FD {floor['frechet_distance']:.4g}, class accuracy "
        f"{floor['class_accuracy']:.4g}. BOSS: cost metric {digits.get('metric', 'l2')}, "
        f"N = {digits['candidates']} uniform candidates, "
        f"{digits['reference']['dp_noises']} reference trajectories for the costs, "
        f"{digits['reference']['noises']} for straightening.",
        "",
        "| model | grid | steps | FD | class acc. | sliced W. |",
        "|---|---|---|---|---|---|",
    ]
    for r in digits["rows"]:
        lines.append(
            f"| {r['model']} | {r['grid']} | {r['steps']} | {r['frechet_distance']:.4g} | "
            f"{r['class_accuracy']:.4g} | {r['sliced_wasserstein']:.4g} |"
        )
    if digits.get("reference_rows"):
        lines += ["", f"Students from {digits['reference_rows_source']} (not rerun):", ""]
        lines += ["| model | steps | FD | class acc. |", "|---|---|---|---|"]
        for r in digits["reference_rows"]:
            lines.append(
                f"| {r['model']} | {r['steps']} | {r['frechet_distance']:.4g} | "
                f"{r['class_accuracy']:.4g} |"
            )
    lines += ["", "| K | BOSS knots | cost | uniform cost |", "|---|---|---|---|"]
    for K, g in digits["grids"].items():
        knots = ", ".join(f"{k:.3f}" for k in g["knots"])
        uniform = "n/a" if g["uniform_cost"] is None else f"{g['uniform_cost']:.4g}"
        lines.append(f"| {K} | {knots} | {g['cost']:.4g} | {uniform} |")
    if digits["straightening"]:
        lines += ["", "| fine-tune | steps | train s | loss first 50 | loss last 50 |"]
        lines += ["|---|---|---|---|---|"]
        for name, s in digits["straightening"].items():
            lines.append(
                f"| {name} | {s['steps']} | {s['train_seconds']:.0f} | "
                f"{s['loss_first_50']:.4g} | {s['loss_last_50']:.4g} |"
            )
    lines.append("")
    return lines


def markdown(result: dict[str, Any], command: str) -> str:
    """The tables of ``boss_results.md``."""
    lines = ["# BOSS results", "", f"Commands: {command}", ""]
    for key in sorted(k for k in result if k.startswith("digits")):
        lines += _digits_markdown(result[key], key)
    hopper = result.get("hopper")
    if hopper:
        lines += [
            f"## {hopper['env']}: BC flow actor, deterministic return",
            "",
            f"Actor {hopper['actor']} (BC K = {hopper['actor_config']['num_steps']}); BOSS on "
            f"{hopper['observations']} dataset observations, {hopper['reference']}.",
            "",
            "| grid | K | knots | return (mean ± std over episodes) | std of seed means | "
            "episodes |",
            "|---|---|---|---|---|---|",
        ]
        for r in hopper["rows"]:
            knots = ", ".join(f"{k:.2f}" for k in r["knots"])
            lines.append(
                f"| {r['grid']} | {r['steps']} | {knots} | {r['return_mean']:.1f} ± "
                f"{r['return_std_episodes']:.1f} | {r['return_std_seed_means']:.1f} | "
                f"{r['episodes']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, run the parts, write JSON, Markdown and the picture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["digits", "hopper"])
    parser.add_argument("--out", default="docs/generators")
    parser.add_argument("--work-dir", default="outputs/boss")
    parser.add_argument("--gen-dir", default="outputs/gen26/digits")
    parser.add_argument("--reference-results", default="docs/generators/digits_results.json")
    parser.add_argument("--metric", choices=["l2", "mse"], default="l2")
    parser.add_argument("--no-students", dest="students", action="store_false")
    parser.add_argument("--candidates", type=int, default=120)  # k/K candidates for K | 120
    parser.add_argument("--ref-noises", type=int, default=1024)
    parser.add_argument("--dp-noises", type=int, default=512)
    parser.add_argument("--ref-seed", type=int, default=2024)
    parser.add_argument("--digit-steps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--picture-steps", type=int, default=4)
    parser.add_argument("--straighten-steps", type=int, default=400)
    parser.add_argument("--straighten-batch", type=int, default=128)
    parser.add_argument("--straighten-lr", type=float, default=1e-4)
    parser.add_argument(
        "--straighten-uniform", action="store_true", help="also fine-tune on the uniform grid"
    )
    parser.add_argument("--hopper-actor", default="outputs/speed/main/pretrain/bc/bc.pt")
    parser.add_argument(
        "--hopper-dataset", default="pkg://flowrl.experiments/datasets/hopper_medium_v5.npz"
    )
    parser.add_argument("--hopper-env", default="Hopper-v5")
    parser.add_argument("--hopper-steps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--hopper-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hopper-episodes", type=int, default=10)
    parser.add_argument("--hopper-obs", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "boss_results.json"
    # Parts run separately merge into the same file.
    result: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    commands = result.get("commands", {})
    command = "OMP_NUM_THREADS=1 .venv/bin/python experiments/boss.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    start = time.perf_counter()
    if "digits" in args.parts:
        key = "digits" if args.metric == "l2" else f"digits_{args.metric}"
        result[key] = run_digits(args, out)
        commands[key] = command
    if "hopper" in args.parts:
        result["hopper"] = run_hopper(args)
        commands["hopper"] = command
    result["commands"] = commands
    result.setdefault("seconds", {})
    result["seconds"][",".join(args.parts)] = time.perf_counter() - start
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    shown = "; ".join(f"{part}: `{cmd}`" for part, cmd in commands.items())
    (out / "boss_results.md").write_text(markdown(result, shown))
    print(markdown(result, shown))
    return result


if __name__ == "__main__":
    main()
