"""Guidance-Free Training (GFT) of the digits CFG teacher: one network call per step.

GFT (Chen et al. 2025, "Visual Generation Without Guidance", arXiv 2501.15420; ``docs/gft.md``)
fine-tunes the generators pipeline's CFG teacher into a sampling model that takes the guidance
strength β = 1/w as an input, so guided sampling costs one network call per Euler step instead
of CFG's two. This script:

1. rebuilds the CFG teacher from its checkpoint (the ``teacher`` stage of
   ``experiments/generators.py``, same Hydra config and overrides);
2. fine-tunes it with GFT (:class:`~flowrl.generative.trainer.GuidanceFreeTrainer`) for
   ``--steps`` steps;
3. fine-tunes a second copy for the same steps with its own ordinary CFG loss (the control:
   a gain that is only extra training shows up there too);
4. evaluates, with the pipeline's :class:`~flowrl.experiments.generators.Evaluator` and its
   seeds, the CFG teacher and the control at guidance ``--guidance`` (2 calls per step) and
   the GFT model at the same guidance (1 call per step) with K = ``--eval-steps`` Euler
   steps, plus a guidance sweep at the largest K; writes ``gft_results.json`` / ``.md`` and
   ``gft.png`` into ``--docs``.

Both fine-tunings resume from their checkpoints in ``--out`` (a finished one is skipped)::

    python experiments/gft.py --teacher outputs/generators/digits/teacher/checkpoint.pt
    python experiments/gft.py --teacher ... --steps 200 --out /tmp/gft --docs /tmp/gft
    python experiments/gft.py --teacher ... -o output_dir=outputs/x  # generators overrides
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import Tensor

from flowrl.experiments.generators import (
    Evaluator,
    GeneratorsConfig,
    load_data,
    make_net,
)
from flowrl.generative.trainer import (
    GuidanceFreeConfig,
    GuidanceFreeTrainer,
    TeacherConfig,
    TeacherTrainer,
)
from flowrl.generative.visualize import save_comparison


def generators_config(overrides: list[str]) -> GeneratorsConfig:
    """The generators pipeline's config (``configs/generators.yaml``) with overrides."""
    with initialize_config_module(config_module="flowrl.configs", version_base="1.3"):
        raw = compose(config_name="generators", overrides=overrides)
    return OmegaConf.to_object(raw)  # type: ignore[return-value]


def finetune_config(teacher: TeacherConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning recipe shared by GFT and the control (the teacher's, shorter)."""
    base = asdict(teacher)
    base.update(
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        seed=args.seed,
        sample_interval=0,
        checkpoint_interval=args.checkpoint_interval,
        guidance=args.guidance,
    )
    return base


def sample(trainer: Any, n: int, steps: int, labels: Tensor, guidance: float, seed: int) -> Any:
    """Samples with the evaluator's seed, and the wall seconds they took."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        samples = trainer.sample(n, num_steps=steps, y=labels, guidance=guidance)
    return samples, time.perf_counter() - start


def compare(rows: list[dict[str, Any]], steps: list[int]) -> list[dict[str, Any]]:
    """GFT's FD against each CFG model's at matched steps (half the calls) and matched calls."""
    fd = {(r["model"], r["steps"]): r["frechet_distance"] for r in rows}
    out = []
    for ref in ("cfg_teacher", "cfg_control"):
        for k in steps:
            pairs = [(f"matched steps K={k} (GFT: half the calls)", k, k)]
            if 2 * k in steps:
                pairs.append((f"matched calls {2 * k} (GFT K={2 * k}, CFG K={k})", 2 * k, k))
            for what, k_gft, k_cfg in pairs:
                if (ref, k_cfg) not in fd:
                    continue
                gft_fd, cfg_fd = fd["gft", k_gft], fd[ref, k_cfg]
                out.append(
                    {
                        "reference": ref,
                        "what": what,
                        "gft_fd": gft_fd,
                        "cfg_fd": cfg_fd,
                        "ratio": gft_fd / cfg_fd,
                        "gft_calls": k_gft,
                        "cfg_calls": 2 * k_cfg,
                        "within_10_percent": gft_fd <= 1.1 * cfg_fd,
                    }
                )
    return out


def markdown(result: dict[str, Any]) -> str:
    """Tables: matched steps / calls at the guidance scale, and the guidance sweep."""
    floor = result["data_floor"]
    lines = [
        f"Digits (8×8), {result['num_samples']} samples per row, Euler steps, guidance "
        f"w = {result['guidance']}; GFT and the control fine-tuned {result['finetune_steps']} "
        f"steps from the CFG teacher. Real-vs-real floor: FD {floor['frechet_distance']:.3g}, "
        f"class accuracy {floor['class_accuracy']:.3g}.",
        "",
        "| model | K steps | calls / sample | FD | class acc. | sliced W | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['model']} | {row['steps']} | {row['calls_per_sample']} | "
            f"{row['frechet_distance']:.3f} | {row['class_accuracy']:.3f} | "
            f"{row['sliced_wasserstein']:.4f} | {row['seconds']:.2f} |"
        )
    lines += [
        "",
        "GFT against the CFG teacher and the fine-tuned CFG control (ratio = GFT FD / CFG FD; "
        "< 1: GFT better; the target is ≤ 1.10 at half the calls):",
        "",
        "| CFG model | comparison | GFT FD | CFG FD | ratio | GFT calls | CFG calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        lines.append(
            f"| {c['reference']} | {c['what']} | {c['gft_fd']:.3f} | {c['cfg_fd']:.3f} | "
            f"{c['ratio']:.3f} | {c['gft_calls']} | {c['cfg_calls']} |"
        )
    lines += [
        "",
        f"Guidance sweep at K = {result['sweep_steps']}:",
        "",
        "| model | w | calls / sample | FD | class acc. |",
        "|---|---|---|---|---|",
    ]
    for row in result["sweep"]:
        lines.append(
            f"| {row['model']} | {row['guidance']} | {row['calls_per_sample']} | "
            f"{row['frechet_distance']:.3f} | {row['class_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--teacher",
        default="outputs/generators/digits/teacher/checkpoint.pt",
        help="the CFG teacher's checkpoint (experiments/generators.py stages=[teacher])",
    )
    parser.add_argument("--out", default="outputs/gft/digits", help="fine-tuning outputs")
    parser.add_argument("--docs", default="docs/generators", help="where results go")
    parser.add_argument("--steps", type=int, default=2000, help="fine-tuning steps (both)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--checkpoint-interval", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--eval-steps", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--sweep", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-control", action="store_true", help="skip the control run")
    parser.add_argument("--progress-bar", action="store_true")
    parser.add_argument(
        "-o", "--override", action="append", default=[], help="generators config override"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    cfg = generators_config(list(args.override))
    data, labels = load_data(cfg.data)
    torch.manual_seed(cfg.teacher.seed)
    teacher = TeacherTrainer(make_net(cfg.model, data, labels), data, labels, cfg.teacher)
    teacher.load_checkpoint(args.teacher)
    print(f"teacher: {args.teacher} (step {teacher.step})", flush=True)
    out = Path(args.out)
    tuned = finetune_config(cfg.teacher, args)
    timings: dict[str, float] = {}

    torch.manual_seed(args.seed)  # the guidance embedding's random first layer
    gft = GuidanceFreeTrainer.from_teacher(
        teacher, data, labels, GuidanceFreeConfig(**tuned), out / "gft"
    )
    start = time.perf_counter()
    gft.fit(progress_bar=args.progress_bar)
    timings["gft"] = time.perf_counter() - start
    print(f"gft: {gft.step} steps ({timings['gft']:.0f} s this run)", flush=True)

    models: dict[str, tuple[Any, int]] = {"cfg_teacher": (teacher, 2), "gft": (gft, 1)}
    if not args.no_control:
        control_net = make_net(cfg.model, data, labels)
        control_net.load_state_dict(teacher.teacher.state_dict())
        control = TeacherTrainer(control_net, data, labels, TeacherConfig(**tuned), out / "control")
        start = time.perf_counter()
        control.fit(progress_bar=args.progress_bar)
        timings["cfg_control"] = time.perf_counter() - start
        print(f"control: {control.step} steps ({timings['cfg_control']:.0f} s)", flush=True)
        models = {"cfg_teacher": (teacher, 2), "cfg_control": (control, 2), "gft": (gft, 1)}

    print("evaluating", flush=True)
    evaluator = Evaluator(cfg, data, labels)
    n, seed, w = cfg.evaluate.num_samples, cfg.evaluate.seed, args.guidance
    rows: list[dict[str, Any]] = []
    panels: dict[str, Tensor] = {}
    for name, (trainer, calls) in models.items():
        for k in args.eval_steps:
            samples, seconds = sample(trainer, n, k, evaluator.labels, w, seed)
            rows.append(
                {
                    "model": name,
                    "steps": k,
                    "guidance": w,
                    "calls_per_sample": calls * k,
                    "seconds": seconds,
                    **evaluator.metrics(samples),
                }
            )
            print(f"  {name:12s} K={k:3d}  {rows[-1]}", flush=True)
            if k in (4, 8):
                panels[f"{name} K={k} ({calls * k} calls)"] = samples[:40]
    comparisons = compare(rows, args.eval_steps)
    sweep_k = max(args.eval_steps)
    sweep = []
    for name in ("cfg_teacher", "gft"):
        trainer, calls = models[name]
        for g in args.sweep:
            samples, seconds = sample(trainer, n, sweep_k, evaluator.labels, g, seed)
            per_step = 1 if (name == "gft" or g == 1.0) else 2  # CFG at w = 1: one call
            sweep.append(
                {
                    "model": name,
                    "guidance": g,
                    "steps": sweep_k,
                    "calls_per_sample": per_step * sweep_k,
                    "seconds": seconds,
                    **evaluator.metrics(samples),
                }
            )
            print(f"  sweep {name:12s} w={g}  {sweep[-1]}", flush=True)
    result = {
        "guidance": w,
        "num_samples": n,
        "evaluate_seed": seed,
        "finetune_steps": args.steps,
        "teacher_checkpoint": args.teacher,
        "teacher_steps": teacher.step,
        "finetune_config": tuned,
        "gft_beta_range": list(gft.config.beta_range),  # type: ignore[attr-defined]
        "train_seconds_this_run": timings,
        "wall_seconds_this_run": time.perf_counter() - started,
        "command": "python experiments/gft.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": args.threads,
        "rows": rows,
        "comparisons": comparisons,
        "sweep_steps": sweep_k,
        "sweep": sweep,
        "data_floor": evaluator.floor,
    }
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "gft_results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (docs / "gft_results.md").write_text(table)
    save_comparison(panels, docs / "gft.png")
    print(table)
    return result


if __name__ == "__main__":
    main()
