"""Trainers for generators: flow-matching teachers and sCD / rCM students.

Both share :class:`GeneratorTrainer`'s loop: batches drawn from an in-memory dataset by one
``torch.Generator`` (so a resumed run replays the exact same batches and noise), AdamW with
a linear warm-up and optional cosine decay, gradient clipping, an EMA of the trained model,
a tqdm bar, TensorBoard scalars and sample grids, PNG grids on disk, and atomic checkpoints
from which :meth:`GeneratorTrainer.fit` resumes bit for bit (Ctrl-C finishes the current step
and checkpoints it). Checkpoints are read with ``torch.load(weights_only=True)``: a file that
is not one of ours is refused with a ValueError naming it, and nothing in it runs.

* :class:`TeacherTrainer`: conditional flow matching with classifier-free-guidance dropout.
* :class:`GuidanceFreeTrainer`: Guidance-Free Training (GFT, arXiv 2501.15420) of a net with
  a guidance input, from scratch or fine-tuning a CFG teacher; samples guided in one call a step.
* :class:`DistillTrainer`: sCD (``dmd_weight = 0``) or rCM (``dmd_weight > 0``, with a
  fake-score network trained on student samples), from a teacher's EMA weights.

Data-parallel under ``torchrun`` (nothing changes in the API): every rank builds the same
trainer (same config, same data, the same ``out_dir``) and calls :meth:`GeneratorTrainer.fit`.

* Every trained network (and a student's frozen teacher) starts from rank 0's weights; the
  EMA is a copy of them.
* ``TrainerConfig.batch_size`` is the *global* batch: each of the W ranks draws
  ``batch_size / W`` samples per step (W must divide it), with replacement, with its own
  generator (rank 0 seeded with ``seed``, rank r from a hash of (seed, r)), which also draws
  its times, noise and label dropout. Independent draws with replacement are what one
  process drawing the whole batch does, so the data need no sharding.
* Gradients (the student's, and rCM's fake-score network's) are averaged over ranks before
  clipping and the step, in one all-reduce per optimizer that also agrees on the refusal of
  a non-finite loss and on a Ctrl-C, and averages the logged losses; the copies and their
  EMAs stay bit-identical (checked at every checkpoint and at the end).
* Rank 0 alone writes checkpoints, sample grids, TensorBoard events and the progress bar;
  the checkpoint format is a single process's, so each kind of run resumes the other's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from flowrl import distributed
from flowrl.checkpoints import DeferredInterrupt, atomic_save, load_checkpoint_file
from flowrl.data_parallel import (
    rank_stream_seed,
    stop_at_end,
    stop_between_steps,
    synced_guarded_step,
)
from flowrl.flow.times import make_time_sampler
from flowrl.generative.consistency import (
    AdaptiveWeight,
    TrigFlowWrapper,
    consistency_sample,
    dmd_loss,
    fake_score_loss,
    gft_betas,
    gft_loss,
    gft_sample,
    sample_trig_times,
    scd_loss,
    teacher_loss,
    teacher_sample,
    warmup_factor,
)
from flowrl.generative.models import has_guidance_input, with_guidance_input
from flowrl.generative.visualize import save_samples, tensorboard_samples
from flowrl.nets import EMA

__all__ = [
    "DistillConfig",
    "DistillTrainer",
    "GeneratorTrainer",
    "GuidanceFreeConfig",
    "GuidanceFreeTrainer",
    "TeacherConfig",
    "TeacherTrainer",
    "TrainerConfig",
    "trainable_copy",
]


@dataclass
class TrainerConfig:
    """Optimization and bookkeeping shared by every generator trainer.

    Attributes:
        steps: Total gradient steps.
        batch_size: Samples per step. Under ``torchrun`` the global batch: each of the W
            ranks draws ``batch_size // W`` (W must divide it).
        lr: Peak learning rate (AdamW).
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear learning-rate warm-up.
        cosine_decay: Decay the learning rate to 0 on a cosine after the warm-up.
        grad_clip: Max gradient norm (0 disables clipping).
        ema_decay: Decay of the EMA of the trained model (what is sampled and saved).
        seed: Seed of the trainer's generator (batches, noise, times, label dropout); what
            ``train_step`` draws from torch's global RNG (e.g. ``nn.Dropout``) comes from a
            stream of the trainer's own, seeded from it too. Both are checkpointed. Under
            ``torchrun`` these are rank 0's streams; the other ranks' are seeded from
            (seed, rank) (:func:`~flowrl.data_parallel.rank_stream_seed`) and not saved.
        log_interval: Steps between TensorBoard scalar writes.
        sample_interval: Steps between sample grids (0: only at the end).
        checkpoint_interval: Steps between checkpoints (0: only at the end).
        num_samples: Samples per grid.
    """

    steps: int = 5000
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    cosine_decay: bool = True
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_interval: int = 50
    sample_interval: int = 1000
    checkpoint_interval: int = 1000
    num_samples: int = 64

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("need steps >= 1, batch_size >= 1 and lr > 0")


@dataclass
class TeacherConfig(TrainerConfig):
    """A flow-matching teacher.

    Attributes:
        p_uncond: Probability of dropping a label to the null class (guidance training).
        time_sampler: ``"uniform"``, ``"logit_normal"`` or ``"beta"`` (:mod:`flowrl.flow.times`).
        time_sampler_kwargs: Its parameters.
        sample_steps: Euler steps of the grids drawn during training.
        guidance: Guidance scale of those grids.
    """

    p_uncond: float = 0.1
    time_sampler: str = "logit_normal"
    time_sampler_kwargs: dict[str, float] = field(default_factory=dict)
    sample_steps: int = 32
    guidance: float = 1.0


@dataclass
class GuidanceFreeConfig(TeacherConfig):
    """A Guidance-Free Training (GFT) sampling model.

    Attributes:
        beta_range: Training guidance strengths β ~ U(beta_range) per sample (the paper's
            U(0, 1)); β = 1/w, so (0, 1) covers every guidance scale w ≥ 1.
        guidance: Guidance scale w of the grids drawn during training.
    """

    beta_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta_range = tuple(self.beta_range)  # type: ignore[assignment]
        low, high = self.beta_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"need 0 <= beta_range[0] <= beta_range[1] <= 1, got {self.beta_range}"
            )
        if not (math.isfinite(self.guidance) and self.guidance >= 1.0):
            raise ValueError(f"guidance must be a finite number >= 1, got {self.guidance}")


@dataclass
class DistillConfig(TrainerConfig):
    """An sCD or rCM student.

    Attributes:
        sigma_d: TrigFlow's data standard deviation.
        guidance: Teacher guidance scale distilled into the student.
        p_mean: Mean of the log-tangent of the training angles (:func:`sample_trig_times`).
        p_std: Its standard deviation.
        tangent_warmup_steps: Steps over which r ramps from 0 to 1.
        tangent_norm: c of the tangent normalization (≤ 0: off).
        adaptive_weight: Learn sCM's adaptive weighting u(s).
        dmd_weight: λ of rCM's DMD term (0: plain sCD).
        dmd_steps: Student sampling steps used for the DMD samples (one drawn per step).
        fake_steps: Fake-score updates per student update.
        fake_lr: Fake-score learning rate.
        dmd_t_range: Re-noising times of the DMD term (linear-path t).
        sample_steps: Student steps of the grids drawn during training.
    """

    lr: float = 1e-4
    ema_decay: float = 0.99
    warmup_steps: int = 0
    sigma_d: float = 1.0
    guidance: float = 1.0
    p_mean: float = -0.8
    p_std: float = 1.6
    tangent_warmup_steps: int = 500
    tangent_norm: float = 0.1
    adaptive_weight: bool = True
    dmd_weight: float = 0.0
    dmd_steps: tuple[int, ...] = (1, 2, 4)
    fake_steps: int = 2
    fake_lr: float = 1e-4
    dmd_t_range: tuple[float, float] = (0.02, 0.98)
    sample_steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.dmd_steps, self.dmd_t_range = tuple(self.dmd_steps), tuple(self.dmd_t_range)  # type: ignore[assignment]
        if self.sigma_d <= 0 or self.dmd_weight < 0 or self.fake_steps < 0:
            raise ValueError("need sigma_d > 0, dmd_weight >= 0, fake_steps >= 0")


# Seed offsets of the trainer's other RNG streams (the main one is seeded with config.seed).
_GLOBAL_STREAM_OFFSET = 20_011  # global-RNG draws inside train_step (e.g. nn.Dropout)
_GRID_SEED_OFFSET = 10_007  # sample grids drawn during training

# Config fields a resumed run may change (how long and how often it logs, not what it trains).
_RESUMABLE_CHANGES = (
    "steps",
    "log_interval",
    "sample_interval",
    "checkpoint_interval",
    "num_samples",
)

# What every checkpoint holds (subclasses add the keys of their _extra_state).
_CHECKPOINT_KEYS = (
    "kind",
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "generator",
    "step",
    "history",
)


def _first_line(err: BaseException) -> str:
    """The gist of an error's message (torch's can run to paragraphs).

    Its first line, and the next one when the first only announces a list (``Error(s) in
    loading state_dict for ...:``).
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    gist = lines[0] if not lines[0].endswith(":") or len(lines) < 2 else " ".join(lines[:2])
    return f"{type(err).__name__}: {gist.rstrip('.')}"


def _not_a_checkpoint(path: str | os.PathLike, why: str) -> ValueError:
    return ValueError(
        f"{os.fspath(path)!r} is not a flowrl generator checkpoint: {why}. Move it away (or "
        "restore a good copy) to train this stage from the start."
    )


def trainable_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` in training mode whose parameters train.

    Even if ``net`` came frozen (an EMA shadow); ``net`` itself is not touched.
    """
    return copy.deepcopy(net).requires_grad_(True).train()


def _lr_lambda(config: TrainerConfig) -> Any:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if not config.cosine_decay:
            return 1.0
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


class GeneratorTrainer:
    """Training loop, RNG, EMA, logging, grids and checkpoints shared by the trainers.

    Subclasses set ``self.model`` (trained), list extra state in :meth:`_extra_state`,
    and implement :meth:`train_step` and :meth:`sample`. Under ``torchrun`` they pass every
    network to :meth:`_share_weights` before making the EMA, draw their batch with
    :meth:`batch` (this rank's share) and step through :meth:`_apply` (which averages the
    gradients over ranks).

    Args:
        data: Training samples, shape (N, ...).
        labels: Class labels (N,) int64, or None for unconditional training.
        config: Trainer configuration.
        out_dir: Folder for checkpoints, grids and TensorBoard logs (None: nothing written).
            Under ``torchrun`` the same on every rank; rank 0 alone writes into it.

    Raises:
        ValueError: For bad data or labels, or (on every rank) if the world size does not
            divide ``config.batch_size``.
    """

    name = "generator"

    def __init__(
        self,
        data: Tensor,
        labels: Tensor | None,
        config: TrainerConfig,
        out_dir: str | os.PathLike | None = None,
    ):
        if labels is not None and labels.shape != (len(data),):
            raise ValueError(f"labels must have shape ({len(data)},), got {tuple(labels.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError("the training data contain NaN or inf")
        #: Samples this rank draws per step (``config.batch_size`` in a single process).
        self.local_batch_size = distributed.share(config.batch_size, "batch_size", "samples")
        distributed.check_same(f"the {type(self).__name__} config", asdict(config))
        self.data, self.labels, self.config = data, labels, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.generator = torch.Generator()
        self._seed_streams(step=0)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.resumed_from: int | None = None  # the step fit() last resumed from, if any
        self._interrupts: DeferredInterrupt | None = None  # fit's, while it runs
        self._stop_agreed = False  # a rank asked to stop at the last step (torchrun)

    # ------------------------------------------------------------------ to implement

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def train_step(self) -> dict[str, float]:
        """One update; returns its scalars."""
        raise NotImplementedError

    def sample(self, n: int, num_steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """N samples (EMA weights)."""
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ helpers

    def _seed_streams(self, step: int) -> None:
        """Seed this rank's generator and global-RNG stream (rank 0: ``config.seed``'s).

        The global RNG state train_step runs with (see :meth:`_global_stream`) is kept per
        trainer so that what the rest of the program draws cannot change training, and is
        checkpointed.
        """
        seed = self.config.seed
        self.generator.manual_seed(rank_stream_seed(seed, step))
        self.global_rng_state = (
            torch.Generator()
            .manual_seed(rank_stream_seed(seed + _GLOBAL_STREAM_OFFSET, step))
            .get_state()
        )

    def _share_weights(self, *modules: nn.Module | None) -> None:
        """Under ``torchrun``: give every rank rank 0's weights of ``modules`` (None skipped)."""
        for module in modules:
            if module is not None:
                distributed.broadcast_module(module, what=f"the initial {self.name} weights")

    def check_in_sync(self) -> None:
        """Under ``torchrun``: raise on every rank unless the trained networks are identical.

        Compares the model, its EMA and every other trained network of the trainer (one
        small all-reduce each); a no-op in a single process.

        Raises:
            DistributedError: If some rank's copy diverged.
        """
        distributed.check_in_sync(self.model, f"the {self.name} models")
        distributed.check_in_sync(self.ema.shadow, f"the {self.name} EMAs")
        for name, value in vars(self).items():
            if (
                isinstance(value, nn.Module)
                and value is not self.model
                and value is not self.ema
                and any(True for _ in value.parameters())
            ):
                distributed.check_in_sync(value, f"the {self.name} trainers' {name}")

    def _setup_optimizer(self, params: list[nn.Parameter]) -> None:
        cfg = self.config
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))

    def batch(self) -> tuple[Tensor, Tensor | None]:
        """A random training batch (x (B, ...), y (B,) or None) from the trainer's RNG.

        B is ``local_batch_size``: this rank's share of the global batch under ``torchrun``.
        """
        idx = torch.randint(len(self.data), (self.local_batch_size,), generator=self.generator)
        return self.data[idx], None if self.labels is None else self.labels[idx]

    def randn_like(self, x: Tensor) -> Tensor:
        """Standard normal noise from the trainer's RNG."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype)

    def grid_labels(self, n: int) -> Tensor | None:
        """Labels of sample grids: classes in order, cycling (None if unconditional)."""
        if self.labels is None:
            return None
        classes = int(self.labels.max()) + 1
        return torch.arange(n) % classes

    @contextlib.contextmanager
    def _global_stream(self) -> Iterator[None]:
        """Global-RNG draws inside (nn.Dropout, a bare torch.randn) use the trainer's stream."""
        outside = torch.random.get_rng_state()
        torch.random.set_rng_state(self.global_rng_state)
        try:
            yield
        finally:
            self.global_rng_state = torch.random.get_rng_state()
            torch.random.set_rng_state(outside)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of the trainer (``optimizer``, and e.g. rCM's ``fake_optimizer``)."""
        return [value for value in vars(self).values() if isinstance(value, torch.optim.Optimizer)]

    def _apply(
        self, loss: Tensor, params: list[nn.Parameter], scalars: dict[str, float] | None = None
    ) -> float:
        """Backward, clip, step, schedule, EMA; refuses non-finite losses.

        Under ``torchrun`` the gradients are averaged over ranks before clipping (a
        non-finite loss on any rank is refused on every rank) and ``scalars`` (the step's
        logged numbers) are replaced by their means over ranks, in the same all-reduce.
        """
        names = list(scalars or {})
        grad_norm, means, stop = synced_guarded_step(
            loss,
            self.optimizer,
            params,
            self.config.grad_clip,
            what=self.name,
            step=self.step,
            hint="Lower the learning rate or check the data.",
            scalars=[scalars[k] for k in names] if scalars else (),
            stop=self._interrupts is not None and self._interrupts.requested,
        )
        if scalars:
            scalars.update(zip(names, means, strict=True))
        self._stop_agreed = stop
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return grad_norm

    # ------------------------------------------------------------------ loop

    def fit(
        self,
        steps: int | None = None,
        *,
        progress_bar: bool = True,
        tensorboard: bool = True,
        resume: bool = True,
    ) -> GeneratorTrainer:
        """Train until ``steps`` total steps (default ``config.steps``).

        With an ``out_dir``, resumes from ``out_dir/checkpoint.pt`` when it exists (and
        ``resume``), writes TensorBoard logs to ``out_dir/tb`` (a resumed run continues the
        same run, dropping the events a crash left after the checkpoint), sample grids to
        ``out_dir/samples_<step>.png`` and checkpoints every ``checkpoint_interval`` steps.

        Ctrl-C (SIGINT) lets the current step finish, writes a checkpoint at it and then
        raises KeyboardInterrupt, so that calling ``fit`` again (or rerunning the program)
        continues bit for bit. A KeyboardInterrupt raised some other way inside a step is
        checkpointed too when no optimizer had stepped yet (the step is undone); otherwise
        the last checkpoint stands.

        Under ``torchrun`` every rank calls it with the same ``steps`` and ``resume``: rank 0
        decides whether to resume (from its ``out_dir``) and sends the checkpoint to the
        others, alone writes grids, events and checkpoints, and alone shows the bar. A
        signal that reaches any rank stops every rank after the same step; rank 0 writes the
        checkpoint, the others wait for it, and every rank raises KeyboardInterrupt.
        """
        total = self.config.steps if steps is None else steps
        main = distributed.is_main()
        distributed.check_same(f"{self.name} fit's steps and resume", (total, resume))
        ckpt = self.out_dir / "checkpoint.pt" if self.out_dir is not None else None
        if ckpt is not None and main:
            # A torn write of a killed run: never read, and replaced by the next save anyway.
            ckpt.with_name(ckpt.name + ".tmp").unlink(missing_ok=True)
        self.resumed_from = None
        found = resume and distributed.on_main(
            lambda: ckpt is not None and ckpt.exists(), f"looking for the {self.name} checkpoint"
        )
        if found:
            self.load_checkpoint(ckpt)  # type: ignore[arg-type]
            self.resumed_from = self.step
        if self.step >= total:
            return self  # already trained that far: nothing to do
        writer = None
        if tensorboard and self.out_dir is not None and main:
            from torch.utils.tensorboard import SummaryWriter

            # Same folder, so the same TensorBoard run. purge_step: TensorBoard drops the
            # earlier events at steps > self.step (those a killed run logged after its last
            # checkpoint), so the resumed curves have no duplicate or orphaned points.
            writer = SummaryWriter(os.fspath(self.out_dir / "tb"), purge_step=self.step + 1)
        cfg = self.config
        bar = tqdm(
            total=total, initial=self.step, disable=not (progress_bar and main), desc=self.name
        )
        stepped = False  # whether an optimizer has stepped in the current step

        def mark_stepped(*_: Any) -> None:
            nonlocal stepped
            stepped = True

        hooks = [opt.register_step_pre_hook(mark_stepped) for opt in self._optimizers()]
        in_step, rng_before, global_before = False, self.generator.get_state(), None
        interrupts = DeferredInterrupt(self.name if main else None)
        self._interrupts, self._stop_agreed = interrupts, False
        try:
            with interrupts:
                while self.step < total:
                    stepped, in_step = False, True
                    rng_before, global_before = self.generator.get_state(), self.global_rng_state
                    with self._global_stream():
                        scalars = self.train_step()
                    self.history.append({"step": self.step, **scalars})
                    in_step = False
                    bar.update(1)
                    if self.step % cfg.log_interval == 0 or self.step == total:
                        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
                        if writer is not None:
                            for key, value in scalars.items():
                                writer.add_scalar(f"train/{key}", value, self.step)
                    if cfg.sample_interval and self.step % cfg.sample_interval == 0:
                        self._write_samples(writer)
                    if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                        self.check_in_sync()
                        if ckpt is not None:
                            self.save_checkpoint(ckpt)
                    stop_between_steps(interrupts, self._stop_agreed)
                if self.out_dir is not None and self.step > 0:
                    self._write_samples(writer)
                    self.save_checkpoint(ckpt)  # type: ignore[arg-type]
                self.check_in_sync()  # also: no rank goes on before rank 0's checkpoint
                stop_at_end(interrupts)  # finished, but the caller must stop too
        except KeyboardInterrupt:
            self._checkpoint_on_interrupt(
                ckpt,
                torn=in_step and stepped,
                undo=(rng_before, global_before) if in_step else None,
            )
            if interrupts.clean:  # every rank is here, after the same step: wait for the file
                distributed.barrier(f"waiting for rank 0 to write the {self.name} checkpoint")
            raise
        finally:
            self._interrupts = None
            for hook in hooks:
                hook.remove()
            bar.close()
            if writer is not None:
                writer.close()
        return self

    def _checkpoint_on_interrupt(
        self, ckpt: Path | None, torn: bool, undo: tuple[Tensor, Tensor | None] | None
    ) -> None:
        """On KeyboardInterrupt: checkpoint the last complete step, unless the step is torn.

        Args:
            ckpt: Checkpoint path (None: nothing is written).
            torn: The interrupt hit a step after an optimizer had stepped: the models are
                between two steps and cannot be checkpointed.
            undo: RNG states from before the interrupted step (None: between steps).
        """
        main = distributed.is_main()  # rank 0 writes (and says) what is to be written
        if torn:
            if not main:
                return
            where = f"; the last checkpoint, {os.fspath(ckpt)!r}, stands" if ckpt else ""
            tqdm.write(
                f"{self.name}: interrupted inside step {self.step + 1} after an update; "
                f"no checkpoint written{where}",
                file=sys.stderr,
            )
            return
        if undo is not None:  # nothing was updated yet: rewind the step's random draws
            self.generator.set_state(undo[0])
            if undo[1] is not None:
                self.global_rng_state = undo[1]
        if ckpt is None or self.step == 0 or not main:
            return
        self.save_checkpoint(ckpt)
        tqdm.write(
            f"{self.name}: interrupted; checkpoint at step {self.step} written to "
            f"{os.fspath(ckpt)!r} (run again to resume)",
            file=sys.stderr,
        )

    def _write_samples(self, writer: Any) -> None:
        if self.out_dir is None or not distributed.is_main():
            return
        n = self.config.num_samples
        # A separate RNG: drawing grids must not change any training stream.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.config.seed + _GRID_SEED_OFFSET)
            samples = self.sample(n, y=self.grid_labels(n))
        save_samples(samples, self.out_dir / f"samples_{self.step:07d}.png")
        if writer is not None:
            tensorboard_samples(writer, "samples", samples, self.step)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit: tensors and plain Python data only.

        (So that :meth:`load_checkpoint` can read it with ``weights_only=True``.)
        """
        return {
            "kind": type(self).__name__,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "global_rng": self.global_rng_state,
            "step": self.step,
            "history": self.history,
            "config": asdict(self.config),
            **self._extra_state(),
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Atomic write of :meth:`state_dict` (a crash never leaves a torn checkpoint).

        The state goes to ``<path>.tmp``, is flushed to disk, then renamed over ``path``
        (:func:`flowrl.checkpoints.atomic_save`). Under ``torchrun`` rank 0 writes it (its
        RNG states are the ones saved) and the other ranks write nothing.
        """
        if distributed.is_main():
            atomic_save(self.state_dict(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint of the same trainer class, architecture and config.

        Only tensors and plain data are unpickled (``weights_only=True``).

        Under ``torchrun`` every rank calls it: rank 0 reads the file and sends its contents
        to the others (who need no access to it), and every rank raises its errors. Rank 0
        continues the saved RNG streams (a single process resumes bit for bit); the other
        ranks' are not saved and restart from seeds hashed from (seed, rank, saved step), so
        a resumed multi-rank run differs from the uninterrupted one only in what ranks > 0
        draw. A single process's checkpoint resumes on any number of ranks and vice versa.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a generator checkpoint (unreadable, truncated,
                holding other Python objects, missing entries), is another trainer's, or
                does not fit this trainer's networks; the message names the file.
        """
        state = distributed.on_main(
            lambda: load_checkpoint_file(path, "flowrl generator checkpoint"),
            f"sending the {self.name} checkpoint",
        )
        kind = state.get("kind")
        if not isinstance(kind, str):
            raise _not_a_checkpoint(path, "it has no 'kind' entry naming the trainer")
        if kind != type(self).__name__:
            raise ValueError(
                f"{os.fspath(path)!r} is a {kind} checkpoint, not a {type(self).__name__} "
                "one: load it with that trainer, or point this one at another out_dir"
            )
        missing = [key for key in (*_CHECKPOINT_KEYS, *self._extra_state()) if key not in state]
        if missing:
            raise _not_a_checkpoint(
                path,
                f"it lacks {missing} (written by another version of flowrl, or by a {kind} "
                "with another config)",
            )
        saved_config = state.get("config")
        if isinstance(saved_config, dict):  # what is trained must match; how long need not
            ours = json.loads(json.dumps(asdict(self.config)))  # tuples -> lists, as saved
            saved_config = json.loads(json.dumps(saved_config))
            changed = sorted(
                key
                for key in set(ours) | set(saved_config)
                if key not in _RESUMABLE_CHANGES and ours.get(key) != saved_config.get(key)
            )
            if changed:
                raise ValueError(
                    f"{os.fspath(path)!r} was trained with another config (differs in: "
                    f"{', '.join(changed)}): resume with that config, or use another out_dir"
                )
        history = state["history"]
        if not isinstance(state["step"], int) or state["step"] < 0:
            raise _not_a_checkpoint(path, f"its step is {state['step']!r}, not an int >= 0")
        if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
            raise _not_a_checkpoint(path, "its history is not a list of dicts")
        global_rng = state.get("global_rng")  # absent in checkpoints of older versions
        for key, value in (("generator", state["generator"]), ("global_rng", global_rng)):
            if value is not None and not (
                isinstance(value, Tensor)
                and value.dtype == torch.uint8
                and value.shape == self.global_rng_state.shape
            ):
                raise _not_a_checkpoint(path, f"its {key!r} is not a CPU RNG state")
        part = "model"
        try:
            self.model.load_state_dict(state["model"])
            part = "ema"
            self.ema.load_state_dict(state["ema"])
            part = "optimizer"
            self.optimizer.load_state_dict(state["optimizer"])
            part = "scheduler"
            self.scheduler.load_state_dict(state["scheduler"])
            part = "generator"
            self.generator.set_state(state["generator"])
            part = "extra state"
            self._load_extra_state(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"{os.fspath(path)!r} does not fit this {type(self).__name__} (its {part} "
                f"failed to load: {_first_line(err)}). "
                "It was saved with another network or config. This trainer may be partly "
                "restored: build a new one with the matching network, or another out_dir."
            ) from err
        if global_rng is not None:
            self.global_rng_state = global_rng
        self.step = state["step"]
        self.history = list(history)
        if distributed.rank() > 0:  # this rank's streams were not saved: new ones from here
            self._seed_streams(self.step)


class TeacherTrainer(GeneratorTrainer):
    """Flow-matching teacher with classifier-free-guidance dropout.

    Args:
        net: Velocity network ``net(x, t, y)`` (e.g. :class:`~flowrl.generative.models.DiT`).
        data: Training samples (N, ...).
        labels: Labels (N,) or None.
        config: :class:`TeacherConfig`.
        out_dir: Output folder or None.
    """

    name = "teacher"

    def __init__(
        self,
        net: nn.Module,
        data: Tensor,
        labels: Tensor | None,
        config: TeacherConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ):
        super().__init__(data, labels, config or TeacherConfig(), out_dir)
        cfg: TeacherConfig = self.config  # type: ignore[assignment]
        self.model = net
        self._share_weights(net)
        self.ema = EMA(net, cfg.ema_decay)
        self.time_sampler = make_time_sampler(cfg.time_sampler, **cfg.time_sampler_kwargs)
        self._setup_optimizer(list(net.parameters()))

    @property
    def teacher(self) -> nn.Module:
        """The EMA network (what students distil)."""
        return self.ema.shadow

    # The integration of :meth:`sample` (GFT's integrates its sampling model in one call a step).
    _integrate = staticmethod(teacher_sample)

    def _loss(self, x1: Tensor, y: Tensor | None, t: Tensor) -> Tensor:
        """The step's loss on a batch at times ``t`` (draws its noise from the generator)."""
        cfg: TeacherConfig = self.config  # type: ignore[assignment]
        return teacher_loss(self.model, x1, y, t, self.randn_like(x1), cfg.p_uncond, self.generator)

    def train_step(self) -> dict[str, float]:
        """One flow-matching step."""
        x1, y = self.batch()
        t = self.time_sampler(len(x1), generator=self.generator)
        self.model.train()
        loss = self._loss(x1, y, t)
        out = {"loss": float(loss.detach())}
        out["grad_norm"] = self._apply(loss, list(self.model.parameters()), out)
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def sample(
        self,
        n: int,
        num_steps: int | None = None,
        y: Tensor | None = None,
        guidance: float | None = None,
        method: str = "euler",
    ) -> Tensor:
        """N samples of the EMA teacher with K Euler (or Heun) steps at guidance w."""
        cfg: TeacherConfig = self.config  # type: ignore[assignment]
        noise = torch.randn((n, *self.data.shape[1:]))
        return self._integrate(
            self.teacher,
            noise,
            y,
            num_steps or cfg.sample_steps,
            method,
            cfg.guidance if guidance is None else guidance,
        )


class GuidanceFreeTrainer(TeacherTrainer):
    """Guidance-Free Training (Chen et al. 2025, arXiv 2501.15420) of a sampling model.

    The net takes the guidance strength β = 1/w as an input (``guidance_input``); the loss
    is :func:`~flowrl.generative.consistency.gft_loss` (the implicit conditional model
    β·v_s + (1 − β)·sg[v_u] trained by flow matching, label dropout trains v_u) with β drawn
    per sample from ``config.beta_range``. :meth:`sample` at guidance w makes one network
    call per Euler step, where CFG makes two. Checkpoints and resume as for every trainer.

    Args:
        net: Network with a guidance input (:func:`~flowrl.generative.models.
            with_guidance_input` converts a trained CFG net; see :meth:`from_teacher`).
        data: Training samples (N, ...).
        labels: Labels (N,) (required).
        config: :class:`GuidanceFreeConfig`.
        out_dir: Output folder or None.

    Raises:
        ValueError: If the net has no guidance input or there are no labels.
    """

    name = "gft"

    def __init__(
        self,
        net: nn.Module,
        data: Tensor,
        labels: Tensor | None,
        config: GuidanceFreeConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ):
        if not has_guidance_input(net):
            raise ValueError(
                "GuidanceFreeTrainer needs a net with a guidance input: build it with "
                "guidance_input=True, or use GuidanceFreeTrainer.from_teacher / "
                "with_guidance_input(net) to fine-tune a CFG teacher"
            )
        if labels is None:
            raise ValueError("GuidanceFreeTrainer needs class labels (guidance needs classes)")
        super().__init__(net, data, labels, config or GuidanceFreeConfig(), out_dir)

    @classmethod
    def from_teacher(
        cls,
        teacher: TeacherTrainer | nn.Module,
        data: Tensor,
        labels: Tensor | None,
        config: GuidanceFreeConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ) -> GuidanceFreeTrainer:
        """GFT fine-tuning of a CFG teacher: its EMA net plus a zero guidance embedding.

        The teacher is not modified; the new trainer's net and EMA start as a copy whose
        output equals the teacher's at every β (until :meth:`fit` trains it, or resumes
        from ``out_dir/checkpoint.pt``).
        """
        net = teacher.teacher if isinstance(teacher, TeacherTrainer) else teacher
        return cls(with_guidance_input(net), data, labels, config, out_dir)

    _integrate = staticmethod(gft_sample)  # one network call per step

    def _loss(self, x1: Tensor, y: Tensor | None, t: Tensor) -> Tensor:
        """GFT's loss, β drawn per sample from ``beta_range`` (then the noise)."""
        cfg: GuidanceFreeConfig = self.config  # type: ignore[assignment]
        beta = gft_betas(len(x1), cfg.beta_range, self.generator).to(x1.dtype)
        noise = self.randn_like(x1)
        return gft_loss(self.model, x1, y, t, noise, beta, cfg.p_uncond, self.generator)  # type: ignore[arg-type]


class DistillTrainer(GeneratorTrainer):
    """sCD (and rCM when ``dmd_weight > 0``) student of a flow-matching teacher.

    The student starts as a copy of the teacher's network in TrigFlow form; with rCM a
    fake-score network (another copy, linear-path) is trained on the student's samples.

    Args:
        teacher: The teacher's velocity network (its EMA weights); it is not modified.
        data: Training samples (N, ...).
        labels: Labels (N,) or None.
        config: :class:`DistillConfig`.
        out_dir: Output folder or None.
    """

    name = "distill"

    def __init__(
        self,
        teacher: nn.Module,
        data: Tensor,
        labels: Tensor | None,
        config: DistillConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ):
        super().__init__(data, labels, config or DistillConfig(), out_dir)
        cfg: DistillConfig = self.config  # type: ignore[assignment]
        frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.teacher_net = frozen
        self.teacher = TrigFlowWrapper(frozen, cfg.sigma_d, cfg.guidance)
        # The copies must train even if the teacher came frozen (an EMA shadow).
        self.model = TrigFlowWrapper(trainable_copy(teacher), cfg.sigma_d)
        with torch.random.fork_rng():  # the weighting net's init follows config.seed
            torch.manual_seed(cfg.seed)
            self.weight = AdaptiveWeight() if cfg.adaptive_weight else None
        self._share_weights(self.teacher_net, self.model, self.weight)
        self.ema = EMA(self.model, cfg.ema_decay)
        params = list(self.model.parameters())
        if self.weight is not None:
            params += list(self.weight.parameters())
        self._params = params
        self._setup_optimizer(params)
        self.fake: nn.Module | None = None
        if cfg.dmd_weight > 0:
            self.fake = trainable_copy(teacher)
            self.fake_optimizer = torch.optim.AdamW(
                self.fake.parameters(), lr=cfg.fake_lr, betas=cfg.betas
            )
            self._share_weights(self.fake)
            self._fake_sync = distributed.GradientSync(self.fake.parameters())

    @property
    def student(self) -> TrigFlowWrapper:
        """The EMA student (what is sampled and saved)."""
        return self.ema.shadow  # type: ignore[return-value]

    def _dmd_samples(self, y: Tensor | None, grad: bool) -> Tensor:
        cfg: DistillConfig = self.config  # type: ignore[assignment]
        pick = int(torch.randint(len(cfg.dmd_steps), (), generator=self.generator))
        noise = torch.randn((self.local_batch_size, *self.data.shape[1:]), generator=self.generator)
        with torch.set_grad_enabled(grad):
            return consistency_sample(
                self.model, noise, y, cfg.dmd_steps[pick], self.generator, grad_last_only=True
            )

    def _times(self, n: int) -> Tensor:
        lo, hi = self.config.dmd_t_range  # type: ignore[attr-defined]
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def train_step(self) -> dict[str, float]:
        """Fake-score updates (rCM), then one student update."""
        cfg: DistillConfig = self.config  # type: ignore[assignment]
        out: dict[str, float] = {}
        x0, y = self.batch()
        if self.fake is not None:
            for _ in range(cfg.fake_steps):
                samples = self._dmd_samples(y, grad=False)
                t = self._times(len(samples))
                fake_loss = fake_score_loss(self.fake, samples, y, t, self.randn_like(samples))
                self.fake_optimizer.zero_grad(set_to_none=True)
                fake_loss.backward()
                self._fake_sync(what="averaging the fake-score gradients")  # torchrun only
                torch.nn.utils.clip_grad_norm_(
                    self.fake.parameters(), cfg.grad_clip or float("inf")
                )
                self.fake_optimizer.step()
                out["fake_loss"] = float(fake_loss.detach())
        s = sample_trig_times(len(x0), cfg.p_mean, cfg.p_std, cfg.sigma_d, self.generator)
        r = warmup_factor(self.step, cfg.tangent_warmup_steps)
        loss, stats = scd_loss(
            self.model,
            self.teacher,
            x0,
            y,
            s,
            self.randn_like(x0),
            warmup=r,
            tangent_norm=cfg.tangent_norm,
            weight=self.weight,
        )
        out["scd_loss"] = float(loss.detach())
        if self.fake is not None:
            samples = self._dmd_samples(y, grad=True)
            t = self._times(len(samples))
            dmd = dmd_loss(
                samples, y, self.teacher_net, self.fake, t, self.randn_like(samples), cfg.guidance
            )
            loss = loss + cfg.dmd_weight * dmd
            out["dmd_loss"] = float(dmd.detach())
        out.update(
            loss=float(loss.detach()), mse=float(stats["mse"]), g_norm=float(stats["g_norm"])
        )
        grad_norm = self._apply(loss, self._params, out)  # out: averaged over ranks
        out.update(warmup=r, grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0])
        return out

    def sample(self, n: int, num_steps: int | None = None, y: Tensor | None = None) -> Tensor:
        """N samples of the EMA student in ``num_steps`` (default ``config.sample_steps``)."""
        cfg: DistillConfig = self.config  # type: ignore[assignment]
        noise = torch.randn((n, *self.data.shape[1:]))
        return consistency_sample(self.student, noise, y, num_steps or cfg.sample_steps)

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.weight is not None:
            state["weight"] = self.weight.state_dict()
        if self.fake is not None:
            state["fake"] = self.fake.state_dict()
            state["fake_optimizer"] = self.fake_optimizer.state_dict()
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if self.weight is not None:
            self.weight.load_state_dict(state["weight"])
        if self.fake is not None:
            self.fake.load_state_dict(state["fake"])
            self.fake_optimizer.load_state_dict(state["fake_optimizer"])
