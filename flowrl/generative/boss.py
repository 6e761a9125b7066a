"""BOSS for generators: the Bellman-optimal grid of a (guided) teacher and its straightening.

Nguyen, Nguyen & Nguyen, "Bellman Optimal Stepsize Straightening of Flow-Matching Models",
ICLR 2024 (arXiv 2312.16414). The maths is in :mod:`flowrl.flow.boss`; here:

* :func:`teacher_velocity` — the guided velocity field of a class-conditional teacher for a
  batch of labels (what sampling integrates, so what BOSS optimizes the grid for);
* :func:`boss_reference` — reference trajectories of that field through the candidate
  times, from fixed noises (the data of both phases);
* :class:`BossTrainer` — straightening: fine-tunes a copy of the teacher so that one
  (guided) Euler step on the BOSS grid reproduces the reference trajectory between
  consecutive knots. It is a :class:`~flowrl.generative.trainer.GeneratorTrainer` (EMA,
  checkpoints, resume, logging) whose "data" are the reference states at the grid knots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowrl.flow.boss import reference_trajectory, straightening_loss
from flowrl.flow.integrators import VelocityFn
from flowrl.flow.times import Steps, TimeGrid
from flowrl.generative.consistency import guided_velocity, teacher_sample
from flowrl.generative.trainer import GeneratorTrainer, TrainerConfig, trainable_copy
from flowrl.nets import EMA

__all__ = ["BossConfig", "BossTrainer", "boss_reference", "teacher_velocity"]


def teacher_velocity(net: nn.Module, y: Tensor | None, guidance: float = 1.0) -> VelocityFn:
    """The (classifier-free guided) velocity ``(t, x) -> v`` of ``net`` for labels ``y``."""
    return lambda t, x: guided_velocity(net, x, t, y, guidance)


def boss_reference(
    net: nn.Module,
    noise: Tensor,
    y: Tensor | None,
    candidates: Steps = 100,
    *,
    guidance: float = 1.0,
    substeps: int = 1,
    method: str = "heun",
    batch_size: int = 256,
) -> Tensor:
    """Reference states of the guided teacher at every candidate time, (N+1, B, ...).

    Args:
        net: Teacher velocity network ``net(x, t, y)`` (eval mode is the caller's).
        noise: Starting noises, shape (B, ...).
        y: Labels (B,) or None.
        candidates: N or a candidate :class:`~flowrl.flow.times.TimeGrid`.
        guidance: Classifier-free guidance scale w.
        substeps: Integration steps per candidate interval.
        method: Integrator of the reference (``"heun"``: second order).
        batch_size: Noises integrated together.

    Returns:
        The states, float32, without a graph.
    """
    parts = []
    for start in range(0, len(noise), batch_size):
        stop = start + batch_size
        labels = None if y is None else y[start:stop]
        parts.append(
            reference_trajectory(
                teacher_velocity(net, labels, guidance),
                noise[start:stop],
                candidates,
                substeps=substeps,
                method=method,
            )
        )
    return torch.cat(parts, dim=1)


@dataclass
class BossConfig(TrainerConfig):
    """Straightening (BOSS phase 2).

    Attributes:
        guidance: Guidance scale the fine-tuned net is sampled (and trained) with: the
            straightening loss goes through the guided velocity, so both of its passes
            (conditional and unconditional) are trained.
        target: ``"velocity"`` (regress v(τ_k, x_k) on (x_{k+1} − x_k)/Δτ_k) or
            ``"displacement"`` (the local Euler error itself), see
            :func:`~flowrl.flow.boss.straightening_loss`.
    """

    steps: int = 500
    lr: float = 1e-4
    warmup_steps: int = 0
    ema_decay: float = 0.99
    sample_interval: int = 0
    checkpoint_interval: int = 0
    guidance: float = 1.0
    target: str = "velocity"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target not in ("velocity", "displacement"):
            raise ValueError(f"target must be 'velocity' or 'displacement', got {self.target!r}")


class BossTrainer(GeneratorTrainer):
    """Fine-tunes a copy of a teacher so that Euler steps on ``grid`` follow the reference.

    Each step draws reference trajectories (their states at the K+1 knots) and one step
    index k per row, and minimizes :func:`~flowrl.flow.boss.straightening_loss` of the
    guided velocity at (τ_k, x(τ_k)) against x(τ_{k+1}).

    Args:
        net: The teacher network; a trainable copy is made (the teacher is not modified).
        grid: The BOSS grid (:func:`~flowrl.flow.boss.bellman_grid`).
        states: Reference states at the knots, shape (M, K+1, ...) (from
            :func:`boss_reference`, indexed at the grid's candidate indices, batch first).
        labels: Labels (M,) of those trajectories, or None.
        config: :class:`BossConfig`.
        out_dir: Output folder or None.
    """

    name = "boss"

    def __init__(
        self,
        net: nn.Module,
        grid: TimeGrid,
        states: Tensor,
        labels: Tensor | None,
        config: BossConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ):
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        if states.dim() < 3 or states.shape[1] != grid.num_steps + 1:
            raise ValueError(
                f"states must have shape (M, K+1 = {grid.num_steps + 1}, ...), "
                f"got {tuple(states.shape)}"
            )
        super().__init__(states, labels, config or BossConfig(), out_dir)
        self.grid = grid
        self.model = trainable_copy(net)
        self._share_weights(self.model)
        self.ema = EMA(self.model, self.config.ema_decay)
        self._knots = torch.tensor(grid.knots, dtype=states.dtype)
        self._setup_optimizer(list(self.model.parameters()))

    @property
    def straightened(self) -> nn.Module:
        """The EMA network (what is sampled and saved)."""
        return self.ema.shadow

    def train_step(self) -> dict[str, float]:
        """One straightening step."""
        cfg: BossConfig = self.config  # type: ignore[assignment]
        states, y = self.batch()
        rows = torch.arange(len(states))
        k = torch.randint(self.grid.num_steps, (len(states),), generator=self.generator)
        t, t_next = self._knots[k], self._knots[k + 1]
        self.model.train()
        loss = straightening_loss(
            teacher_velocity(self.model, y, cfg.guidance),
            states[rows, k],
            states[rows, k + 1],
            t,
            t_next - t,
            target=cfg.target,  # type: ignore[arg-type]
        )
        out = {"loss": float(loss.detach())}
        out["grad_norm"] = self._apply(loss, list(self.model.parameters()), out)
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def sample(self, n: int, num_steps: Steps | None = None, y: Tensor | None = None) -> Tensor:
        """N samples of the EMA network with Euler steps on ``grid`` (or ``num_steps``)."""
        cfg: BossConfig = self.config  # type: ignore[assignment]
        noise = torch.randn((n, *self.data.shape[2:]))
        self.straightened.eval()
        steps = self.grid if num_steps is None else num_steps
        return teacher_sample(self.straightened, noise, y, steps, "euler", cfg.guidance)

    def _extra_state(self) -> dict[str, Any]:
        return {"grid": self.grid.to_list()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        saved = TimeGrid.from_list(state["grid"])
        if saved != self.grid:
            raise ValueError(
                f"the checkpoint straightened the grid {saved!r}, not {self.grid!r}: point "
                "this trainer at another out_dir"
            )
