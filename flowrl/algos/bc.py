"""Behaviour cloning of a flow policy on an offline dataset.

    data = OfflineDataset.load_npz("hopper_medium.npz")
    bc = FlowBC.from_dataset(data, env=gym.make("Hopper-v5"), config=BCConfig(steps=20_000))
    bc.learn(tensorboard_log="runs/bc")
    bc.actor_ema.save("bc.pt")          # EMA weights: what downstream RL loads

The trainer minimises :meth:`FlowActor.bc_loss` (flow matching, or flow matching plus
shortcut self-consistency) with Adam, clips gradients, keeps an EMA copy of the actor, logs
``train/*`` scalars to TensorBoard and refuses to apply a step whose loss is not finite.

Data-parallel under ``torchrun`` (``torchrun --nproc_per_node=N script.py``; nothing changes
in the API): every rank builds the same trainer and calls :meth:`FlowBC.learn`.

* All ranks start from rank 0's weights (and normalizers); the EMA starts from them too.
* ``BCConfig.batch_size`` is the *global* batch: each of the W ranks draws
  ``batch_size / W`` rows per step (W must divide it), with replacement, from its own copy
  of the dataset, with its own RNG (rank 0 seeded with ``seed``, rank r with a seed hashed
  from (seed, r)), which also draws that rank's flow times and noise. Independent draws with
  replacement are what one process drawing the whole batch does, so no index sharding is
  needed (and none has to be kept in step across a resume).
* The gradients are averaged over ranks before clipping and the step (one all-reduce, which
  also agrees on the refusal of a non-finite loss and on a Ctrl-C), so the actors and their
  EMAs stay bit-identical; ``losses`` and the logged scalars are the ranks' means. (A
  shortcut model's self-consistency rows are ``round(bootstrap_fraction · B / W)`` per rank,
  so their global count can differ from a single process's by the rounding.)
* Rank 0 alone writes checkpoints, TensorBoard events and the progress bar; the checkpoint
  format is that of a single process, so either kind of run resumes the other's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from flowrl import distributed
from flowrl.checkpoints import DeferredInterrupt, atomic_save, load_checkpoint_file
from flowrl.data.datasets import OfflineDataset
from flowrl.data.normalizers import Normalizer
from flowrl.data_parallel import (
    rank_stream_seed,
    stop_between_steps,
    synced_guarded_step,
)
from flowrl.flow.times import make_time_sampler
from flowrl.nets.ema import EMA
from flowrl.policies.diffusion import DiffusionActor
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["BCConfig", "FlowBC", "dataset_fingerprint"]


def dataset_fingerprint(dataset: OfflineDataset) -> dict[str, Any]:
    """Rows and a checksum of a dataset's observations and actions (which data a run saw)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (dataset.observations, dataset.actions):
        digest.update(np.ascontiguousarray(array).view(np.uint8).tobytes())
    return {"rows": len(dataset), "checksum": digest.hexdigest()}


@dataclass
class BCConfig:
    """Optimisation settings of behaviour cloning.

    Attributes:
        steps: Gradient steps to take in total.
        batch_size: Rows per step, sampled with replacement. Under ``torchrun`` the global
            batch: each of the W ranks draws ``batch_size // W`` rows (W must divide it).
        lr: Adam learning rate (cosine-decayed to ``lr * final_lr_fraction``).
        final_lr_fraction: Learning rate at the last step relative to ``lr``.
        weight_decay: AdamW weight decay.
        grad_clip: Max global gradient norm (``None`` disables clipping).
        ema_decay: Decay of the EMA weights (0 keeps a plain copy of the last weights).
        time_sampler: ``"uniform"``, ``"logit_normal"`` or ``"beta"``.
        time_sampler_kwargs: Fields of that sampler.
        seed: Seed of the trainer's RNG (batches, times, noise) and, in
            :meth:`FlowBC.from_dataset`, of the actor's initial weights. Under ``torchrun``
            rank 0's RNG; the other ranks' are seeded from it and their rank
            (:func:`~flowrl.data_parallel.rank_stream_seed`).
        log_interval: Steps between TensorBoard writes.
        device: Torch device.
    """

    steps: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    time_sampler: str = "uniform"
    time_sampler_kwargs: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    log_interval: int = 100
    device: str = "cpu"


class FlowBC:
    """Trains a :class:`FlowActor` by behaviour cloning.

    Under ``torchrun`` every rank builds one with the same config (the module docstring
    says what each rank does); ``actor`` is replaced by rank 0's weights.

    Args:
        actor: The actor to train (its normalizers must already be set).
        dataset: Offline (observation, action) pairs.
        config: Optimisation settings.

    Raises:
        ValueError: If the actor does not fit the dataset, or (on every rank) if the world
            size does not divide ``config.batch_size``.
    """

    def __init__(self, actor: FlowActor, dataset: OfflineDataset, config: BCConfig | None = None):
        self.config = config or BCConfig()
        if actor.config.obs_dim != dataset.obs_dim or actor.config.action_dim != dataset.action_dim:
            raise ValueError(
                f"actor expects (Do, Da) = ({actor.config.obs_dim}, {actor.config.action_dim}) "
                f"but the dataset has ({dataset.obs_dim}, {dataset.action_dim})"
            )
        #: Rows this rank draws per step (``batch_size`` in a single process).
        self.local_batch_size = distributed.share(self.config.batch_size, "BCConfig.batch_size")
        # Every rank must train with the same settings (the device may name each rank's GPU).
        settings = {k: v for k, v in asdict(self.config).items() if k != "device"}
        distributed.check_same("BCConfig", settings)
        self.device = torch.device(self.config.device)
        self.actor = actor.to(self.device)
        distributed.broadcast_module(self.actor, what="the initial BC actor")
        self.dataset = dataset
        self.ema = EMA(self.actor, self.config.ema_decay)  # a copy of the broadcast weights
        self.optimizer = torch.optim.AdamW(
            self.actor.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer,
            T_max=max(self.config.steps, 1),
            eta_min=self.config.lr * self.config.final_lr_fraction,
        )
        self.time_sampler = make_time_sampler(
            self.config.time_sampler, **self.config.time_sampler_kwargs
        )
        self.generator = torch.Generator(device=self.device).manual_seed(
            rank_stream_seed(self.config.seed)
        )
        self.step = 0
        self.losses: list[float] = []
        self._fingerprint: dict[str, Any] | None = None  # of the dataset, on first save
        self._interrupts: DeferredInterrupt | None = None  # learn's, while it runs
        self._stop_agreed = False  # a rank asked to stop at the last step (torchrun)

    @classmethod
    def from_dataset(
        cls,
        dataset: OfflineDataset,
        env: gym.Env | None = None,
        actor_config: dict[str, Any] | None = None,
        config: BCConfig | None = None,
        actor_class: type[FlowActor] = FlowActor,
    ) -> FlowBC:
        """Build an actor sized and normalized for ``dataset`` and wrap it in a trainer.

        Observations get a Gaussian normalizer fitted on the data. Actions are normalized by
        the env's action box when ``env`` is given (the flow's [−1, 1] box is then the
        env's box); without an env, by the data's range.

        Args:
            dataset: Offline data.
            env: Optional env whose spaces the dataset must match.
            actor_config: Overrides of :class:`FlowActorConfig` fields (width, depth, …).
            config: Optimisation settings.
            actor_class: :class:`FlowActor` (flow matching) or
                :class:`~flowrl.policies.DiffusionActor` (the ε-prediction loss of a
                diffusion policy, for DPPO); the trainer is the same.

        Returns:
            The trainer.
        """
        if env is not None:
            dataset.check_spaces(env.observation_space, env.action_space)
            space = env.action_space
            action_norm = Normalizer.box(space.low, space.high)  # type: ignore[attr-defined]
        else:
            action_norm = Normalizer.from_data_range(dataset.actions)
        obs_norm = Normalizer.gaussian(dataset.observations)
        actor_cfg = FlowActorConfig(
            obs_dim=dataset.obs_dim, action_dim=dataset.action_dim, **(actor_config or {})
        )
        config = config or BCConfig()
        # The initial weights come from torch's global RNG: seed it from the trainer's seed,
        # without disturbing the caller's RNG state, so that one seed is one BC run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            actor = actor_class(actor_cfg, obs_norm, action_norm)
        return cls(actor, dataset, config)

    @property
    def actor_ema(self) -> FlowActor:
        """The EMA copy of the actor (use it for evaluation and as the RL starting point)."""
        return self.ema.shadow  # type: ignore[return-value]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the step: ``local_batch_size`` (obs, action) pairs.

        Drawn with replacement by the trainer's RNG (this rank's under ``torchrun``).
        """
        return self.dataset.sample(
            self.local_batch_size, generator=self.generator, device=self.device
        )

    def loss(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The actor's BC loss terms on a batch (times and noise from the trainer's RNG)."""
        return self.actor.bc_loss(
            obs, actions, time_sampler=self.time_sampler, generator=self.generator
        )

    def train_step(self) -> dict[str, float]:
        """Take one gradient step; return its scalars (under torchrun: means over ranks).

        Raises:
            FloatingPointError: If the loss is NaN or inf (on any rank); the step is not
                applied (on any rank).
        """
        obs, actions = self.batch()
        self.actor.train()
        terms = self.loss(obs, actions)
        names = list(terms)
        grad_norm, means, stop = synced_guarded_step(
            terms["loss"],
            self.optimizer,
            self.actor.parameters(),
            self.config.grad_clip,
            what="BC",
            step=self.step,
            hint="Check the dataset for extreme values and lower the learning rate.",
            scalars=[float(terms[k].detach()) for k in names],
            stop=self._interrupts is not None and self._interrupts.requested,
        )
        self._stop_agreed = stop
        self.scheduler.step()
        self.ema.update(self.actor)
        self.step += 1
        out = dict(zip(names, means, strict=True))
        out["grad_norm"] = grad_norm
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def learn(
        self,
        steps: int | None = None,
        *,
        tensorboard_log: str | os.PathLike | None = None,
        progress_bar: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_interval: int = 1000,
    ) -> FlowBC:
        """Train until ``steps`` total steps (default ``config.steps``) have been taken.

        Under ``torchrun`` every rank calls it with the same ``steps`` and
        ``checkpoint_interval``; rank 0 alone shows the bar and writes the TensorBoard events
        and checkpoints (the other ranks may pass the same paths: they write nothing). A
        Ctrl-C or SIGTERM that reaches any rank stops every rank after the same step (rank 0
        writes the checkpoint, the others wait for it, then every rank raises
        KeyboardInterrupt). Every ``checkpoint_interval`` steps and at the end the ranks
        check that their actors and EMAs are still bit-identical
        (:func:`~flowrl.distributed.check_in_sync`, one small all-reduce).

        Args:
            steps: Total step count to reach (counting steps already taken).
            tensorboard_log: Folder for TensorBoard event files (``train/<name>`` scalars).
            progress_bar: Show a tqdm bar.
            checkpoint_path: If set, save a resumable trainer checkpoint there every
                ``checkpoint_interval`` steps, at the end and when interrupted (Ctrl-C);
                :meth:`load_checkpoint` resumes it bit for bit.
            checkpoint_interval: Steps between checkpoints (0: only at the end and on
                interruption).

        Returns:
            ``self``.
        """
        total = self.config.steps if steps is None else steps
        main = distributed.is_main()
        distributed.check_same(
            "BC learn's steps and checkpoint_interval", (total, checkpoint_interval)
        )
        writer = None
        if tensorboard_log is not None and main:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run continues the same event files; purge_step hides what the
            # interrupted run logged past its checkpoint.
            writer = SummaryWriter(os.fspath(tensorboard_log), purge_step=self.step or None)
        bar = tqdm(total=total, initial=self.step, disable=not (progress_bar and main), desc="BC")
        stop = DeferredInterrupt("BC" if main else None)
        self._interrupts, self._stop_agreed = stop, False
        try:
            with stop:  # a Ctrl-C lands between two whole steps
                while self.step < total:
                    stop_between_steps(stop, self._stop_agreed)
                    scalars = self.train_step()
                    self.losses.append(scalars["loss"])
                    bar.update(1)
                    if self.step % self.config.log_interval == 0 or self.step == total:
                        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
                        if writer is not None:
                            for name, value in scalars.items():
                                writer.add_scalar(f"train/{name}", value, self.step)
                    if checkpoint_interval and self.step % checkpoint_interval == 0:
                        self.check_in_sync()
                        if checkpoint_path is not None:
                            self.save_checkpoint(checkpoint_path)
        except KeyboardInterrupt:
            # A signal waited for its step to end: the state is whole (a second Ctrl-C
            # stops mid-step, and then the last periodic checkpoint stands).
            if checkpoint_path is not None and stop.clean:
                self.save_checkpoint(checkpoint_path)
                if main:
                    print(f"\nBC interrupted at step {self.step}; checkpoint -> {checkpoint_path}")
            if stop.clean:  # every rank is here, after the same step: wait for the file
                distributed.barrier("waiting for rank 0 to write the BC checkpoint")
            raise
        finally:
            self._interrupts = None
            bar.close()
            if writer is not None:
                writer.close()
        if checkpoint_path is not None:
            self.save_checkpoint(checkpoint_path)
        self.check_in_sync()  # also: no rank returns before rank 0's checkpoint is written
        return self

    def check_in_sync(self) -> None:
        """Under ``torchrun``: raise on every rank unless the actors and EMAs are identical.

        One small all-reduce (a sum and a sum of squares per parameter tensor); a no-op in
        a single process.

        Raises:
            DistributedError: If some rank's copy diverged (e.g. user code changed rank 0's).
        """
        distributed.check_in_sync(self.actor, "the BC actors")
        distributed.check_in_sync(self.ema.shadow, "the BC actors' EMAs")

    # ------------------------------------------------------------------ resumable state

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Save everything needed to resume training bit for bit (atomic write).

        Under ``torchrun`` rank 0 writes it (its RNG state is the one saved) and the other
        ranks write nothing, so every rank may call it.
        """
        if not distributed.is_main():
            return
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self._fingerprint is None:
            self._fingerprint = dataset_fingerprint(self.dataset)
        state = {
            "actor": self.actor.checkpoint(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "losses": self.losses,
            "config": asdict(self.config),
            "dataset": self._fingerprint,
        }
        atomic_save(state, path)

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike, dataset: OfflineDataset) -> FlowBC:
        """Resume a trainer saved by :meth:`save_checkpoint` on the same dataset.

        The file is read with ``weights_only=True``: tensors and plain data only, nothing of
        it runs.

        Under ``torchrun`` every rank calls it: rank 0 reads the file and sends its contents
        to the others (who need no access to it), and any error is raised on every rank.
        A checkpoint of a single process resumes on any number of ranks and the other way
        round. Rank 0 continues the saved RNG stream, so a single process resumes bit for
        bit; the other ranks' streams are not saved: they restart from a seed hashed from
        (seed, rank, saved step), so a resumed multi-rank run differs from the uninterrupted
        one in the rows and noise of ranks > 0 only (the same distribution).

        Raises:
            FileNotFoundError: If there is no file.
            ValueError: If the file is damaged, not a BC trainer checkpoint, or was trained
                on another dataset (its normalizers were fitted on that one).
        """
        name = os.fspath(path)
        state = distributed.on_main(
            lambda: load_checkpoint_file(
                path,
                "BC trainer checkpoint",
                ("actor", "ema", "optimizer", "scheduler", "generator", "step", "losses", "config"),
            ),
            "sending the BC checkpoint",
        )
        saved = state.get("dataset")
        ours = dataset_fingerprint(dataset) if saved is not None else None
        # Under torchrun every rank checks its own copy, and all refuse if one differs.
        if distributed.agree(saved != ours, "comparing the ranks' datasets with the checkpoint"):
            if saved == ours:
                raise ValueError(
                    f"{name!r}: another rank's dataset is not the one it was trained on "
                    f"({saved['rows']} rows, checksum {saved['checksum']}): every rank must "
                    "resume with that dataset"
                )
            raise ValueError(
                f"{name!r} was trained on another dataset ({saved['rows']} rows, checksum "
                f"{saved['checksum']}; this one: {len(dataset)} rows, checksum "
                f"{ours['checksum']}): its normalizers and progress "
                "belong to that dataset. Resume with that dataset, or start a new trainer."
            )
        try:
            tag = state["actor"].get("class") if isinstance(state["actor"], dict) else None
            actor_class = DiffusionActor if tag == DiffusionActor.__name__ else FlowActor
            actor = actor_class.from_checkpoint(state["actor"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{name!r}: {err}") from None
        trainer = cls(actor, dataset, BCConfig(**state["config"]))
        trainer.ema.load_state_dict(state["ema"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.step = state["step"]
        trainer.losses = list(state["losses"])
        if distributed.rank() == 0:
            trainer.generator.set_state(state["generator"])
        else:  # this rank's stream was not saved: a new one, for the rest of the run
            trainer.generator.manual_seed(rank_stream_seed(trainer.config.seed, trainer.step))
        return trainer
