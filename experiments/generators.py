"""Generator pipeline: flow-matching teacher → sCD student → rCM student → evaluation.

Hydra entry point (``configs/generators.yaml``; presets per data set in ``configs/dataset/``)::

    python experiments/generators.py                      # digits (8×8, class-conditional)
    python experiments/generators.py dataset=gaussians8   # 2-D 8-Gaussian mixture
    python experiments/generators.py dataset=video        # moving squares, 8 frames
    python experiments/generators.py teacher.steps=500 stages=[teacher,evaluate]

Every stage resumes from its checkpoint in ``output_dir`` and a finished stage is skipped,
so re-running after an interruption continues where it stopped: Ctrl-C checkpoints the step
it stopped at, after a kill at most ``checkpoint_interval`` steps are redone, and the resumed
run is bit for bit the uninterrupted one (same ``threads``). Checkpoints are only read as
tensors and plain data (``torch.load(weights_only=True)``), so a planted file cannot run
code. Outputs per stage: a folder with ``checkpoint.pt``, sample grids and TensorBoard logs;
at the end ``results.json`` and ``results.md`` (teacher at several step counts, students at
1, 2, 4 steps; metrics by data kind) and ``grids/*.png``.

Data-parallel under ``torchrun`` (the same arguments)::

    torchrun --standalone --nproc_per_node=2 experiments/generators.py dataset=gaussians8

Every rank trains every stage (each stage's ``batch_size`` is the global batch, split among
the ranks, which must divide it; gradients are averaged, so the ranks' networks stay
identical); rank 0 alone resumes from and writes the checkpoints, grids and TensorBoard
logs, evaluates, writes ``results.json`` / ``results.md`` and Hydra's own files, and prints.
A plain ``python`` run is the single-process pipeline, unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from torch import Tensor

from flowrl import distributed
from flowrl.data_parallel import rank_zero
from flowrl.generative.data import digits, mixture, mixture_modes, moving_squares
from flowrl.generative.metrics import frechet_distance, motion_directions, train_digit_classifier
from flowrl.generative.models import DiT, DiTConfig, MLPGenerator
from flowrl.generative.trainer import DistillConfig, DistillTrainer, TeacherConfig, TeacherTrainer
from flowrl.generative.visualize import save_comparison, save_samples
from flowrl.metrics import mode_counts, sliced_wasserstein

# rank_zero: under torchrun only rank 0 writes Hydra's files (configs/generators.yaml).
OmegaConf.register_new_resolver("rank_zero", rank_zero, replace=True)

STAGES = ("teacher", "scd", "rcm", "evaluate")


@dataclass
class DataConfig:
    """Which data: ``gaussians8`` (2-D), ``digits`` (images) or ``video`` (moving squares)."""

    name: str = "digits"
    count: int = 20000  # samples of gaussians8 / videos (digits has 1797)
    image_size: int = 8  # digits: 8 or 16
    radius: float = 2.0  # gaussians8
    std: float = 0.1  # gaussians8
    frames: int = 8  # video
    video_size: int = 16  # video
    seed: int = 0


@dataclass
class ModelConfig:
    """Network: ``dit`` for images/videos, ``mlp`` for 2-D data."""

    kind: str = "dit"
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    patch: list[int] = field(default_factory=lambda: [2, 2])


@dataclass
class EvalConfig:
    """Evaluation sample counts and step counts."""

    num_samples: int = 898  # digits: half the set, the real-vs-real floor uses the other half
    teacher_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 32])
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])
    seed: int = 1234


@dataclass
class GeneratorsConfig:
    """Everything the pipeline reads (Hydra validates overrides against these fields)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    scd: DistillConfig = field(default_factory=DistillConfig)
    rcm: DistillConfig = field(default_factory=lambda: DistillConfig(dmd_weight=1.0))
    rcm_init: str = "scd"  # "scd": start rCM from the sCD student; "teacher": from scratch
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    output_dir: str = "outputs/generators/${data.name}"
    threads: int = 1
    progress_bar: bool = True


ConfigStore.instance().store(name="generators_schema", node=GeneratorsConfig)


# ---------------------------------------------------------------------- data and nets


def load_data(cfg: DataConfig) -> tuple[Tensor, Tensor | None]:
    """Training samples and labels for the configured data."""
    if cfg.name == "gaussians8":
        x, _ = mixture(cfg.count, "8gaussians", cfg.radius, cfg.std, seed=cfg.seed)
        return x, None
    if cfg.name == "digits":
        return digits(cfg.image_size)
    if cfg.name == "video":
        return moving_squares(cfg.count, cfg.frames, cfg.video_size, seed=cfg.seed)
    raise ValueError(f"unknown data {cfg.name!r}; choose gaussians8, digits or video")


def make_net(cfg: ModelConfig, data: Tensor, labels: Tensor | None) -> torch.nn.Module:
    """A fresh generator network for these data."""
    classes = int(labels.max()) + 1 if labels is not None else 0
    if cfg.kind == "mlp":
        return MLPGenerator(data.shape[1], cfg.width, cfg.depth, num_classes=classes)
    if cfg.kind == "dit":
        return DiT(
            DiTConfig(
                sample_shape=tuple(data.shape[1:]),
                patch=tuple(cfg.patch),
                width=cfg.width,
                depth=cfg.depth,
                heads=cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                num_classes=classes,
            )
        )
    raise ValueError(f"unknown model kind {cfg.kind!r}; choose dit or mlp")


def load_teacher(
    path: str | os.PathLike, cfg: GeneratorsConfig, data: Tensor, labels: Tensor | None
) -> TeacherTrainer:
    """The teacher trained by this pipeline, rebuilt from its ``checkpoint.pt``.

    The trainer's config is the one saved in the checkpoint (so it loads whatever recipe
    trained it); the network follows ``cfg.model``. Sample with ``.sample`` or use the EMA
    network ``.teacher``.
    """
    from flowrl.checkpoints import load_checkpoint_file

    state = load_checkpoint_file(path, "flowrl generator checkpoint")
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"{os.fspath(path)!r} holds no trainer config: not a teacher checkpoint")
    known = {f.name for f in fields(TeacherConfig)}
    config = TeacherConfig(**{k: v for k, v in saved.items() if k in known})
    teacher = TeacherTrainer(make_net(cfg.model, data, labels), data, labels, config)
    teacher.load_checkpoint(path)
    return teacher


# ---------------------------------------------------------------------- evaluation


class Evaluator:
    """Metrics by data kind, all against fixed reference sets."""

    def __init__(self, cfg: GeneratorsConfig, data: Tensor, labels: Tensor | None):
        self.name, self.cfg = cfg.data.name, cfg.evaluate
        n = cfg.evaluate.num_samples
        gen = torch.Generator().manual_seed(cfg.evaluate.seed)
        self.labels = None
        if labels is not None:
            classes = int(labels.max()) + 1
            self.labels = torch.arange(n) % classes  # balanced conditioning labels
        if self.name == "gaussians8":
            self.reference, _ = mixture(n, "8gaussians", cfg.data.radius, cfg.data.std, seed=10_001)
            fresh, _ = mixture(n, "8gaussians", cfg.data.radius, cfg.data.std, seed=10_002)
            self.modes = mixture_modes("8gaussians", cfg.data.radius)
            self.floor = self.metrics(fresh)
        elif self.name == "digits":
            self.classifier, self.classifier_accuracy = train_digit_classifier(cfg.data.image_size)
            order = torch.randperm(len(data), generator=gen)
            half = len(data) // 2
            self.reference_pixels = data[order[:half]][:n].flatten(1)
            with torch.no_grad():
                self.reference = self.classifier.features(data[order[:half]][:n])
            floor_images = data[order[half:]][:n]
            floor_labels = labels[order[half:]][:n]  # type: ignore[index]
            self.floor = self.metrics(floor_images, floor_labels)
        else:
            videos, video_labels = moving_squares(n, data.shape[2], data.shape[-1], seed=10_003)
            self.floor = self.metrics(videos, video_labels)

    def metrics(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Quality numbers of samples (conditioned on ``labels`` when class-conditional)."""
        labels = self.labels if labels is None else labels
        samples = samples.detach().float()
        if self.name == "gaussians8":
            counts = mode_counts(samples, self.modes, radius=3 * 0.1 + 0.2)
            return {
                "sliced_wasserstein": float(
                    sliced_wasserstein(
                        samples, self.reference, generator=torch.Generator().manual_seed(0)
                    )
                ),
                "modes_covered": int((counts >= 0.02 * len(samples)).sum()),
                "in_mode_fraction": float(counts.sum() / len(samples)),
            }
        if self.name == "digits":
            clipped = samples.clamp(-1, 1)
            with torch.no_grad():
                features = self.classifier.features(clipped)
                predicted = self.classifier(clipped).argmax(1)
            return {
                "frechet_distance": frechet_distance(features, self.reference),
                "class_accuracy": float((predicted == labels).float().mean()),
                # In pixel space (64 or 256 dims), against held-out real digits.
                "sliced_wasserstein": float(
                    sliced_wasserstein(
                        clipped.flatten(1),
                        self.reference_pixels,
                        generator=torch.Generator().manual_seed(0),
                    )
                ),
            }
        bright = (samples > 0).float().sum(dim=(1, 3, 4))  # (N, T) pixels per frame
        return {
            "motion_accuracy": float((motion_directions(samples) == labels).float().mean()),
            "square_pixel_error": float((bright - 16).abs().mean()),
        }


def evaluate(
    cfg: GeneratorsConfig,
    evaluator: Evaluator,
    teacher: TeacherTrainer,
    students: dict[str, DistillTrainer],
    out: Path,
) -> dict[str, Any]:
    """Sample every model at every step count with the same seeds; write grids and tables."""
    n = cfg.evaluate.num_samples
    rows: list[dict[str, Any]] = []
    grids = out / "grids"

    panels: dict[str, Tensor] = {}
    most = max(cfg.evaluate.teacher_steps)

    def record(model: str, steps: int, samples: Tensor, seconds: float) -> None:
        rows.append(
            {"model": model, "steps": steps, "seconds": seconds, **evaluator.metrics(samples)}
        )
        picture = samples[:64] if samples.dim() <= 4 else samples[:8]
        save_samples(picture, grids / f"{model}_{steps}step.png")
        # The comparison figure: the teacher at 1 step and at most steps, students at 1, 2.
        if (model == "teacher" and steps in (1, most)) or (model != "teacher" and steps <= 2):
            label = f"{model}, {steps} step{'s' if steps > 1 else ''}"
            panels[label] = (
                samples if samples.dim() == 2 else picture[: 40 if samples.dim() == 4 else 6]
            )
        print(f"  {model:8s} {steps:3d} steps  {rows[-1]}", flush=True)

    for steps in cfg.evaluate.teacher_steps:
        torch.manual_seed(cfg.evaluate.seed)
        start = time.perf_counter()
        with torch.no_grad():
            samples = teacher.sample(n, num_steps=steps, y=evaluator.labels)
        record("teacher", steps, samples, time.perf_counter() - start)
    for name, student in students.items():
        for steps in cfg.evaluate.student_steps:
            torch.manual_seed(cfg.evaluate.seed)
            start = time.perf_counter()
            with torch.no_grad():
                samples = student.sample(n, num_steps=steps, y=evaluator.labels)
            record(name, steps, samples, time.perf_counter() - start)
    save_comparison(panels, out / "comparison.png")
    return {"rows": rows, "data_floor": evaluator.floor}


def markdown(cfg: GeneratorsConfig, result: dict[str, Any]) -> str:
    """Results table (one row per model and step count)."""
    rows = result["rows"]
    keys = [k for k in rows[0] if k not in ("model", "steps", "seconds")]
    lines = [
        f"Data: {cfg.data.name}; {cfg.evaluate.num_samples} samples per row; "
        f"data-vs-data floor: "
        + ", ".join(f"{k} {v:.4g}" for k, v in result["data_floor"].items()),
        "",
        "| model | steps | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in rows:
        values = " | ".join(f"{row[k]:.4g}" for k in keys)
        lines.append(f"| {row['model']} | {row['steps']} | {values} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- pipeline


def _fit(trainer: Any, stage: str, cfg: GeneratorsConfig, timings: dict[str, float]) -> None:
    start = time.perf_counter()
    trainer.fit(progress_bar=cfg.progress_bar)
    timings[stage] = time.perf_counter() - start
    resumed = "" if trainer.resumed_from is None else f", resumed from step {trainer.resumed_from}"
    if distributed.is_main():
        print(
            f"{stage}: {trainer.step} steps ({timings[stage]:.0f} s this run{resumed})", flush=True
        )


def _exists(path: Path) -> bool:
    """Whether rank 0 finds ``path`` (every rank gets its answer; a plain check alone)."""
    return distributed.on_main(path.exists, f"looking for {path}")


def run(cfg: GeneratorsConfig) -> dict[str, Any]:
    """Run the configured stages; returns the evaluation (empty if not a stage).

    Under ``torchrun`` every rank calls it: each trains every stage, rank 0 alone writes,
    evaluates and returns the evaluation (the other ranks return an empty dict).
    """
    unknown = set(cfg.stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    data, labels = load_data(cfg.data)
    torch.manual_seed(cfg.teacher.seed)
    teacher = TeacherTrainer(
        make_net(cfg.model, data, labels), data, labels, cfg.teacher, out / "teacher"
    )
    timings: dict[str, float] = {}
    if "teacher" in cfg.stages:
        _fit(teacher, "teacher", cfg, timings)
    elif _exists(out / "teacher" / "checkpoint.pt"):
        teacher.load_checkpoint(out / "teacher" / "checkpoint.pt")  # read by rank 0 alone
    else:
        raise FileNotFoundError(
            f"no teacher checkpoint in {out / 'teacher'}: run the teacher stage"
        )
    students: dict[str, DistillTrainer] = {}
    for stage in ("scd", "rcm"):
        stage_cfg: DistillConfig = getattr(cfg, stage)
        trainer = DistillTrainer(teacher.teacher, data, labels, stage_cfg, out / stage)
        checkpoint = out / stage / "checkpoint.pt"
        if (
            stage == "rcm"
            and cfg.rcm_init == "scd"
            and "scd" in students
            and not _exists(checkpoint)
        ):
            # rCM as sCD + DMD, continued from the sCD student (saves CPU time).
            trainer.model.load_state_dict(students["scd"].model.state_dict())
            trainer.ema.load_state_dict(students["scd"].ema.state_dict())
        if stage in cfg.stages:
            _fit(trainer, stage, cfg, timings)
        elif _exists(checkpoint):
            trainer.load_checkpoint(checkpoint)
        else:
            continue
        students[stage] = trainer
    if "evaluate" not in cfg.stages or not distributed.is_main():
        return {}  # (under torchrun, rank 0 alone evaluates)
    print("evaluating", flush=True)
    result = evaluate(cfg, Evaluator(cfg, data, labels), teacher, students, out)
    result["config"] = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    # Wall time of the training this invocation did (0 for stages resumed as finished).
    result["train_seconds_this_run"] = timings
    result["train_steps"] = {
        name: trainer.step for name, trainer in {"teacher": teacher, **students}.items()
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(cfg, result)
    (out / "results.md").write_text(table)
    print(table)
    return result


@hydra.main(version_base="1.3", config_path="pkg://flowrl.configs", config_name="generators")
def _hydra_main(cfg: GeneratorsConfig) -> dict[str, Any]:
    """Hydra entry point: convert the validated config and run the pipeline."""
    return run(OmegaConf.to_object(cfg))  # type: ignore[arg-type]


def main() -> dict[str, Any]:
    """The command (script and ``flowrl-generators``): Hydra's arguments, under torchrun too.

    Joins the process group when ``torchrun`` started the process (a plain run: nothing),
    keeps ranks other than 0 from writing Hydra's files, runs, and leaves the group.
    """
    with distributed.joined():
        return _hydra_main()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The stage being trained has checkpointed the step it reached (see fit).
        if os.environ.get("RANK", "0") == "0":  # (main left the group: torchrun's RANK)
            print("interrupted: run the same command again to resume", file=sys.stderr, flush=True)
        sys.exit(130)
