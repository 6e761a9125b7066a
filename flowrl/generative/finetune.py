"""Reward fine-tuning of flow generators: DiffusionNFT and a reward-weighted baseline.

DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) improves a pretrained generator with a
black-box reward, online, on the FORWARD process: each step

1. draws a batch of prompts (class labels; ``group_size`` samples per label) and samples
   them with the *old* (sampling) model, with any sampler — here K Euler steps on THE time
   grid, guidance-free by default;
2. scores the samples with the reward (a black box: no gradient, only numbers), and turns
   rewards into advantages normalized within each label's group, then into optimality
   probabilities r ∈ [0, 1] (:func:`~flowrl.flow.losses.optimality_probability`);
3. noises the *clean* samples with the ordinary flow-matching path, x_t = (1 − t)·ε + t·x1,
   and trains the model with :func:`~flowrl.flow.losses.nft_loss`, which fits the implicit
   positive policy v⁺ = (1 − β)v_old + βv_θ on well-rewarded samples and the negative policy
   v⁻ = (1 + β)v_old − βv_θ on the others. No likelihood, no sampler in the loss: the
   backward pass goes through one network call;
4. moves the old model towards the trained one by a soft update,
   θ_old ← η·θ_old + (1 − η)·θ (an :class:`~flowrl.nets.EMA` with decay η = ``old_decay``).

``kl_coef`` adds ‖v_θ − v_ref‖² towards the starting model (the paper's KL regularizer).
``method="rwr"`` is the baseline at the same reward queries: reward-weighted flow
matching, ‖v_θ − (x1 − ε)‖² on the model's own samples weighted by softmax(A/τ)·B.

The same loss trains flow *policies* (:class:`flowrl.algos.NFT`): one implementation, two
users.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowrl.flow.losses import nft_loss, optimality_probability
from flowrl.flow.paths import expand_time, linear_path_sample
from flowrl.flow.times import make_time_sampler
from flowrl.generative.consistency import teacher_sample
from flowrl.generative.trainer import GeneratorTrainer, TrainerConfig, trainable_copy
from flowrl.nets import EMA

__all__ = [
    "FINETUNE_METHODS",
    "ClassProbabilityReward",
    "RegionMassReward",
    "Reward",
    "RewardFinetuneConfig",
    "RewardFinetuneTrainer",
    "group_advantages",
]

Reward = Callable[[Tensor, "Tensor | None"], Tensor]
"""``reward(samples (B, ...), labels (B,) | None) -> (B,)``: a black box (no gradient used)."""

FINETUNE_METHODS: tuple[str, ...] = ("nft", "rwr")


class ClassProbabilityReward:
    """The probability a classifier gives to a class: the conditioning label, or a fixed one.

    Args:
        classifier: ``classifier(images) -> logits (B, C)`` (e.g.
            :func:`flowrl.generative.metrics.train_digit_classifier`'s).
        target: A fixed class to reward (None: each sample's own label).
    """

    def __init__(self, classifier: nn.Module, target: int | None = None):
        self.classifier = classifier
        self.target = target

    @torch.no_grad()
    def __call__(self, samples: Tensor, labels: Tensor | None) -> Tensor:
        """The probabilities, shape (B,), of samples (B, ...) in [−1, 1]."""
        probs = self.classifier(samples.clamp(-1, 1)).softmax(dim=1)
        if self.target is not None:
            return probs[:, self.target]
        if labels is None:
            raise ValueError("ClassProbabilityReward needs labels (or a fixed target class)")
        return probs.gather(1, labels[:, None].long()).squeeze(1)


class RegionMassReward:
    """Ink in a region: the mean of (x + 1)/2 over the pixels rows × cols of every channel.

    A simple image statistic for images in [−1, 1] (1 = ink), e.g. ``rows=(0, 4)`` rewards
    strokes in the top half of an 8×8 digit.

    Args:
        rows: ``(start, stop)`` of the region's rows.
        cols: ``(start, stop)`` of its columns (None: all).
    """

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int] | None = None):
        self.rows, self.cols = tuple(rows), None if cols is None else tuple(cols)

    @torch.no_grad()
    def __call__(self, samples: Tensor, labels: Tensor | None = None) -> Tensor:
        """The ink shares, shape (B,) (``labels`` unused)."""
        region = samples[..., self.rows[0] : self.rows[1], :]
        if self.cols is not None:
            region = region[..., self.cols[0] : self.cols[1]]
        if region.numel() == 0:
            raise ValueError(f"the region rows={self.rows}, cols={self.cols} is empty")
        return ((region.clamp(-1, 1) + 1) / 2).flatten(1).mean(dim=1)


def group_advantages(rewards: Tensor, group_size: int, *, scale: bool = True) -> Tensor:
    """Advantages of rewards normalized within consecutive groups of ``group_size``.

    Samples of one prompt (label) form a group; each is compared with its group's mean
    (and divided by the group's std when ``scale``; 1e-4 guards constant groups), as
    DiffusionNFT and GRPO do.

    Args:
        rewards: (B,) with B a multiple of ``group_size``.
        group_size: G ≥ 2.
        scale: Divide by the group's standard deviation.

    Returns:
        (B,) advantages.
    """
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size must be >= 2 and divide the batch ({rewards.shape[0]}), got {group_size}"
        )
    groups = rewards.reshape(-1, group_size)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (groups.std(dim=1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


@dataclass
class RewardFinetuneConfig(TrainerConfig):
    """Reward fine-tuning of a flow generator (every step samples ``batch_size`` new samples).

    Attributes:
        method: ``"nft"`` (DiffusionNFT) or ``"rwr"`` (reward-weighted flow matching).
        beta: DiffusionNFT's β > 0 (the step's trust region; small β, large steps).
        clip_max: Advantages are clipped to ±c before becoming r (DiffusionNFT).
        temperature: τ of the baseline's weights softmax(A/τ) (``"rwr"``).
        kl_coef: Weight of ‖v_θ − v_ref‖² towards the starting model (0: off).
        group_size: Samples per label sharing a reward baseline (divides the batch share of
            every rank).
        sample_steps: Euler steps of the sampling (old) model.
        guidance: Classifier-free guidance of the sampler (1: guidance-free, the default).
        old_decay: η of the soft update of the sampling model θ_old ← η·θ_old + (1 − η)·θ
            after every step (0: sample with the current model).
        adaptive: DiffusionNFT's adaptive weighting (each sample's squared error divided by
            its detached mean absolute error).
        data_space: Residuals of the data prediction x̂1 = x_t + (1 − t)·v (the paper's),
            i.e. velocity residuals scaled by (1 − t); False: velocity residuals.
        time_sampler: Training times (``flowrl.flow.times``).
        target_class: Reward a fixed class (:class:`ClassProbabilityReward`); recorded here
            so that a resumed run is checked against it (None: the sample's label).
    """

    steps: int = 200
    batch_size: int = 128
    lr: float = 1e-4
    warmup_steps: int = 0
    cosine_decay: bool = False
    ema_decay: float = 0.0
    checkpoint_interval: int = 100
    sample_interval: int = 0
    method: str = "nft"
    beta: float = 1.0
    clip_max: float = 1.0
    temperature: float = 1.0
    kl_coef: float = 0.0
    group_size: int = 8
    sample_steps: int = 8
    guidance: float = 1.0
    old_decay: float = 0.5
    adaptive: bool = True
    data_space: bool = True
    time_sampler: str = "uniform"
    target_class: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in FINETUNE_METHODS:
            raise ValueError(f"method must be one of {FINETUNE_METHODS}, got {self.method!r}")
        for name in ("beta", "clip_max", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (math.isfinite(self.kl_coef) and self.kl_coef >= 0):
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not 0.0 <= self.old_decay < 1.0:
            raise ValueError(f"old_decay must lie in [0, 1), got {self.old_decay}")
        if self.group_size < 2 or self.batch_size % self.group_size:
            raise ValueError(
                f"group_size must be >= 2 and divide batch_size ({self.batch_size}), "
                f"got {self.group_size}"
            )
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        if not (math.isfinite(self.guidance) and self.guidance >= 1.0):
            raise ValueError(f"guidance must be >= 1, got {self.guidance}")


class RewardFinetuneTrainer(GeneratorTrainer):
    """DiffusionNFT (or the reward-weighted baseline) on a pretrained flow generator.

    Every step samples ``batch_size`` new samples (``batch_size / group_size`` labels drawn
    uniformly, ``group_size`` samples each) with the old model, queries the reward once per
    sample, and takes one gradient step. The trained model, the old (sampling) model and
    the frozen reference are checkpointed; resume is bit for bit as for every generator
    trainer.

    Args:
        net: The pretrained velocity network ``net(x, t, y)`` (copied; e.g. a teacher's EMA).
        reward: The black-box reward (:data:`Reward`).
        data: Samples of the data set: only their shape (and, with ``labels``, the classes)
            are read.
        labels: Labels (N,) of ``data`` or None (unconditional).
        config: :class:`RewardFinetuneConfig`.
        out_dir: Output folder or None.
    """

    name = "finetune"

    def __init__(
        self,
        net: nn.Module,
        reward: Reward,
        data: Tensor,
        labels: Tensor | None,
        config: RewardFinetuneConfig | None = None,
        out_dir: str | os.PathLike | None = None,
    ):
        config = config or RewardFinetuneConfig()
        super().__init__(data, labels, config, out_dir)
        cfg: RewardFinetuneConfig = self.config  # type: ignore[assignment]
        if self.local_batch_size % cfg.group_size:
            raise ValueError(
                f"group_size {cfg.group_size} must divide each rank's batch "
                f"({self.local_batch_size})"
            )
        if not callable(reward):
            raise ValueError(f"reward must be callable (samples, labels) -> (B,), got {reward!r}")
        self.reward = reward
        self.model = trainable_copy(net)
        self.reference = copy.deepcopy(net).eval().requires_grad_(False)
        self._share_weights(self.model, self.reference)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.old = EMA(self.model, cfg.old_decay)
        self.time_sampler = make_time_sampler(cfg.time_sampler)
        self.classes = 0 if labels is None else int(labels.max()) + 1
        self._setup_optimizer(list(self.model.parameters()))

    @property
    def generator_net(self) -> nn.Module:
        """The fine-tuned network (EMA weights): what is sampled and saved."""
        return self.ema.shadow

    def _prompts(self) -> Tensor | None:
        cfg: RewardFinetuneConfig = self.config  # type: ignore[assignment]
        if not self.classes:
            return None
        groups = self.local_batch_size // cfg.group_size
        per_group = torch.randint(self.classes, (groups,), generator=self.generator)
        return per_group.repeat_interleave(cfg.group_size)

    def score(self, samples: Tensor, labels: Tensor | None) -> Tensor:
        """The reward of ``samples``, checked: shape (B,), finite, float32."""
        rewards = self.reward(samples, labels)
        if not isinstance(rewards, Tensor) or rewards.shape != samples.shape[:1]:
            raise ValueError(
                f"the reward must return a tensor of shape ({samples.shape[0]},), got "
                f"{getattr(rewards, 'shape', type(rewards))}"
            )
        if not torch.isfinite(rewards).all():
            raise FloatingPointError(f"the reward returned NaN or inf at step {self.step}")
        return rewards.detach().float()

    def train_step(self) -> dict[str, float]:
        """Sample with the old model, score, one gradient step, soft-update the old model."""
        cfg: RewardFinetuneConfig = self.config  # type: ignore[assignment]
        y = self._prompts()
        noise = torch.randn((self.local_batch_size, *self.data.shape[1:]), generator=self.generator)
        with torch.no_grad():
            x1 = teacher_sample(self.old.shadow, noise, y, cfg.sample_steps, "euler", cfg.guidance)
        rewards = self.score(x1, y)
        adv = group_advantages(rewards, cfg.group_size)
        t = self.time_sampler(len(x1), generator=self.generator)
        eps = self.randn_like(x1)
        path = linear_path_sample(eps, x1, t)
        x_t, target = path.x_t, path.velocity
        self.model.train()
        velocity = self.model(x_t, t, y)
        out = {"reward": float(rewards.mean()), "reward_std": float(rewards.std())}
        if cfg.method == "nft":
            with torch.no_grad():
                old_velocity = self.old.shadow(x_t, t, y)
            r = optimality_probability(adv, cfg.clip_max)
            loss = nft_loss(
                velocity,
                old_velocity,
                target,
                r,
                beta=cfg.beta,
                scale=expand_time(1 - t, x1) if cfg.data_space else None,
                adaptive=cfg.adaptive,
            )
            out["optimality"] = float(r.mean())
        else:
            weights = torch.softmax(adv / cfg.temperature, dim=0) * len(adv)
            loss = (weights * (velocity - target).square().flatten(1).mean(dim=1)).mean()
        out["policy_loss"] = float(loss.detach())
        if cfg.kl_coef > 0:
            with torch.no_grad():
                ref_velocity = self.reference(x_t, t, y)
            kl = (velocity - ref_velocity).square().flatten(1).mean(dim=1).mean()
            loss = loss + cfg.kl_coef * kl
            out["kl"] = float(kl.detach())
        out["loss"] = float(loss.detach())
        out["grad_norm"] = self._apply(loss, list(self.model.parameters()), out)
        self.old.update(self.model)
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def sample(
        self,
        n: int,
        num_steps: int | None = None,
        y: Tensor | None = None,
        guidance: float | None = None,
    ) -> Tensor:
        """N samples of the fine-tuned model with K Euler steps (default the sampler's)."""
        cfg: RewardFinetuneConfig = self.config  # type: ignore[assignment]
        noise = torch.randn((n, *self.data.shape[1:]))
        return teacher_sample(
            self.generator_net,
            noise,
            y,
            num_steps or cfg.sample_steps,
            "euler",
            cfg.guidance if guidance is None else guidance,
        )

    def _extra_state(self) -> dict[str, object]:
        return {"old": self.old.state_dict(), "reference": self.reference.state_dict()}

    def _load_extra_state(self, state: dict[str, object]) -> None:
        self.old.load_state_dict(state["old"])  # type: ignore[arg-type]
        self.reference.load_state_dict(state["reference"])  # type: ignore[arg-type]
