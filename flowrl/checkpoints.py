"""Resumable training: safe checkpoint files and an SB3 callback that writes them.

Every checkpoint flowrl writes itself is a ``torch.save`` of tensors, numbers, strings,
lists and dicts, written under a temporary name and renamed into place (a crash never
leaves a torn file), and read back with ``torch.load(weights_only=True)``, which unpickles
no code: a crafted file is refused, its payload never runs. (SB3's ``.zip`` files and
``VecNormalize`` pickles do unpickle; flowrl never loads one the user did not name.)

An RL run is resumed from its *training state*: the weights and optimizer states of every
module SB3 saves (``model.get_parameters()``), the counters (env steps, updates), the RNG
states and the ``VecNormalize`` statistics. :class:`TrainingCheckpoint` captures that state
at each update boundary of an on-policy learner (the start of a rollout, after the previous
update) and writes it every ``save_freq`` env steps and when training is interrupted::

    ckpt = TrainingCheckpoint("run/checkpoint.pt", save_freq=50_000)
    if ckpt.exists():
        remaining = ckpt.resume(model)          # weights, optimizers, counters, RNG restored
    try:
        model.learn(remaining, callback=ckpt, reset_num_timesteps=not resumed)
    except KeyboardInterrupt:
        ckpt.save_latest()                      # the last update boundary reaches disk
        raise

Episodes in flight when a run stops restart after the resume (environments cannot be
checkpointed in general); everything up to the last update boundary is kept.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import sys
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.utils import get_device

__all__ = [
    "DeferredInterrupt",
    "TRAINING_STATE_KIND",
    "TrainingCheckpoint",
    "atomic_save",
    "file_kind",
    "load_checkpoint_file",
    "restore_training_state",
    "sigterm_as_interrupt",
    "training_state",
]

TRAINING_STATE_KIND = "flowrl.training_state"
# Counters of SB3 algorithms (and of flowrl's on-policy core) that a resume must restore.
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_updates_done")
REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def file_kind(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes and zip listing (nothing is unpickled).

    Returns:
        ``"sb3"`` for a Stable-Baselines3 ``save`` archive (a zip with ``data`` and
        ``*.pth`` entries), ``"torch"`` for a ``torch.save`` file (its zip format, with a
        ``data.pkl`` entry, or the legacy pickle), ``"zip"`` for another zip archive,
        ``"missing"`` where there is no file, ``"other"`` for anything else.
    """
    if not os.path.isfile(path):
        return "missing"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "other"
        if "data" in names and any(name.endswith(".pth") for name in names):
            return "sb3"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        return "zip"
    with open(path, "rb") as f:
        head = f.read(2)
    return "torch" if head[:1] == b"\x80" else "other"  # a pickle: torch's legacy format


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``<path>.tmp``, flush to disk, then rename over ``path``.

    The file is complete or absent: a crash or Ctrl-C while writing leaves the previous file
    (the temporary one is removed, or, after a kill, replaced by the next write).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint_file(
    path: str | os.PathLike, what: str, required: Iterable[str] = ()
) -> dict[str, Any]:
    """Load a checkpoint flowrl wrote, refusing anything else with a clear error.

    Args:
        path: The file.
        what: What it should be, for messages (e.g. ``"BC trainer checkpoint"``).
        required: Keys the checkpoint must have.

    Returns:
        The checkpoint's dict (tensors on the CPU).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is damaged (truncated, not a torch file), holds pickled
            objects other than tensors and plain data (a crafted file: nothing of it runs),
            or lacks a required key. The message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = [line.strip() for line in str(err).splitlines() if "Unsupported" in line]
        found = f" ({detail[0]})" if detail else ""
        raise ValueError(
            f"{path!r} is not a {what}: it is damaged, or holds pickled objects other than "
            "tensors and plain data, which flowrl never unpickles (a file from elsewhere could "
            f"run code): refused unread, nothing in it ran{found}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{path!r} is not a readable {what}: the file is damaged or truncated (e.g. copied "
            f"or written only in part) or is not a torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} is not a {what}: it holds a {type(state).__name__}")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"{path!r} is not a {what}: it lacks {', '.join(missing)}")
    return state


class DeferredInterrupt:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the current step is whole.

    Inside ``with DeferredInterrupt("BC") as stop:``, a first signal only sets
    ``stop.requested`` (and says so on stderr); the loop checks it between steps, saves and
    raises ``KeyboardInterrupt`` (via :meth:`raise_if_requested`). A second Ctrl-C interrupts
    at once. Signals keep their handlers outside the main thread (where none can be set) and
    where the program installed its own.

    Args:
        name: What is interrupted, for the message (None: no message).
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.requested = False
        self.clean = False  # True once raise_if_requested raised (between whole steps)
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.name is not None:
            print(
                f"\n{self.name}: interrupted; finishing this step and writing a checkpoint "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
            for signum, default in defaults.items():
                if signal.getsignal(signum) is default:  # not a handler the program set
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def raise_if_requested(self) -> None:
        """Raise ``KeyboardInterrupt`` if a signal came since entering."""
        if self.requested:
            self.clean = True
            raise KeyboardInterrupt("interrupted between steps")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler's stop) raises ``KeyboardInterrupt`` as Ctrl-C.

    So the code that saves on Ctrl-C saves on a preemption too. Outside the main thread, and
    where the program set its own SIGTERM handler, nothing changes.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the state of a run


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.random.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached"])  # type: ignore[arg-type]
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))


def _rms_state(rms: Any) -> dict[str, Any]:
    return {
        "mean": torch.as_tensor(np.asarray(rms.mean, dtype=np.float64)),
        "var": torch.as_tensor(np.asarray(rms.var, dtype=np.float64)),
        "count": float(rms.count),
    }


def _set_rms(rms: Any, state: dict[str, Any]) -> None:
    rms.mean = state["mean"].numpy().copy()
    rms.var = state["var"].numpy().copy()
    rms.count = state["count"]


def _clone(value: Any) -> Any:
    """A deep copy of nested dicts/lists of tensors (a snapshot later steps cannot change)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item) for item in value)
    return value


def training_state(model: BaseAlgorithm, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything :func:`restore_training_state` needs to continue ``model``'s training.

    Args:
        model: An SB3 algorithm (flowrl's learners, PPO, SAC, …).
        extra: Caller's plain data to keep with it (e.g. a learning curve's rows).

    Returns:
        A dict of tensors and plain data (``torch.load(weights_only=True)`` reads it).
    """
    torch_variables = model._get_torch_save_params()[1]
    state: dict[str, Any] = {
        "kind": TRAINING_STATE_KIND,
        "algorithm": type(model).__name__,
        "parameters": _clone(model.get_parameters()),
        "variables": {
            name: _clone(recursive_getattr(model, name).detach()) for name in torch_variables
        },
        "counters": {name: int(getattr(model, name)) for name in COUNTERS if hasattr(model, name)},
        "rng": _rng_state(),
        "extra": _clone(extra or {}),
    }
    buffer = getattr(model, "replay_buffer", None)
    if isinstance(buffer, ReplayBuffer) and not isinstance(buffer, DictReplayBuffer):
        # Off-policy learners: the filled part of the replay buffer (SB3's own arrays).
        size = buffer.buffer_size if buffer.full else buffer.pos
        state["replay_buffer"] = {
            "pos": int(buffer.pos),
            "full": bool(buffer.full),
            **{
                name: torch.from_numpy(np.array(getattr(buffer, name)[:size]))
                for name in REPLAY_FIELDS
                if getattr(buffer, name, None) is not None
            },
        }
    norm = model.get_vec_normalize_env()
    if norm is not None:
        state["vec_normalize"] = {}
        if norm.norm_obs:
            state["vec_normalize"]["obs_rms"] = _rms_state(norm.obs_rms)
        if norm.norm_reward:
            state["vec_normalize"]["ret_rms"] = _rms_state(norm.ret_rms)
    return state


def restore_training_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Load a :func:`training_state` into a freshly built ``model`` of the same config.

    Weights and optimizer states, torch variables (e.g. SAC's entropy coefficient), the
    counters, the RNG states and the ``VecNormalize`` statistics are restored. The env is
    not: the next ``learn(..., reset_num_timesteps=False)`` resets it.

    Raises:
        ValueError: If the state is of another algorithm or its modules do not match.
    """
    if state.get("kind") != TRAINING_STATE_KIND:
        raise ValueError(f"not a flowrl training state (kind {state.get('kind')!r})")
    if state["algorithm"] != type(model).__name__:
        raise ValueError(
            f"the training state is of a {state['algorithm']} run, not of a "
            f"{type(model).__name__} one"
        )
    try:
        model.set_parameters(state["parameters"], exact_match=True, device=model.device)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"the training state does not fit this {type(model).__name__} (another network "
            f"size or policy?): {str(err).splitlines()[0]}"
        ) from None
    for name, value in state["variables"].items():
        with torch.no_grad():
            recursive_getattr(model, name).copy_(value.to(get_device(model.device)))
    for name, value in state["counters"].items():
        setattr(model, name, value)
    saved_buffer = state.get("replay_buffer")
    if saved_buffer is not None:
        buffer = model.replay_buffer  # type: ignore[attr-defined]
        for name in REPLAY_FIELDS:
            if name in saved_buffer:
                values = saved_buffer[name].numpy()
                target = getattr(buffer, name)
                if values.shape[1:] != target.shape[1:] or len(values) > len(target):
                    raise ValueError(
                        f"the training state's replay buffer ({name} {tuple(values.shape)}: "
                        "rows × envs × …) does not fit this run's "
                        f"({tuple(target.shape)}): an off-policy run resumes with the same "
                        "envs per process and buffer size (under torchrun: the same n_envs "
                        "and number of ranks)"
                    )
                target[: len(values)] = values
        buffer.pos, buffer.full = saved_buffer["pos"], saved_buffer["full"]
    norm = model.get_vec_normalize_env()
    saved_norm = state.get("vec_normalize")
    if (norm is None) != (saved_norm is None):
        raise ValueError(
            "the training state and this env differ in VecNormalize: "
            f"{'saved with' if saved_norm else 'saved without'} it, the env "
            f"{'has' if norm is not None else 'has not'} it"
        )
    if norm is not None and saved_norm is not None:
        for name in ("obs_rms", "ret_rms"):
            if name in saved_norm:
                _set_rms(getattr(norm, name), saved_norm[name])
    _set_rng_state(state["rng"])


# ---------------------------------------------------------------------- the callback


class TrainingCheckpoint(BaseCallback):
    """Keep a resumable checkpoint of an SB3 run: periodically, and on interruption.

    At every update boundary (the start of a rollout) the training state is captured in
    memory for on-policy learners (a copy of the weights: cheap next to a rollout); it is
    written to ``path`` once ``save_freq`` more steps have passed since the last write, and
    :meth:`save_latest` writes the latest capture (call it when ``learn`` is interrupted).
    Off-policy learners (SAC: a boundary every step) are captured at write time only, and
    with their replay buffer.

    Args:
        path: The checkpoint file (written atomically).
        save_freq: Steps (SB3's ``num_timesteps``) between writes; 0: only on interruption.
        extra: Called at each capture; its plain data is kept with the state (e.g. the
            learning curve's :meth:`~flowrl.callbacks.LearningCurveCallback.state_dict`).
        verbose: 1: a line per write.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        save_freq: int,
        extra: Callable[[], dict[str, Any]] | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose=verbose)
        if save_freq < 0:
            raise ValueError(
                f"save_freq must be >= 0 steps (0: only on interruption), got {save_freq}"
            )
        self.path = Path(path)
        self.save_freq = int(save_freq)
        self.extra = extra
        self.latest: dict[str, Any] | None = None
        self._last_write: int | None = None
        self._resumed_at: int | None = None  # the step resume() restored

    def exists(self) -> bool:
        """Whether a checkpoint file is there to resume from."""
        return self.path.is_file()

    def load(self) -> dict[str, Any]:
        """The checkpoint file's training state (safely loaded; clear errors)."""
        state = load_checkpoint_file(
            self.path, "flowrl training checkpoint", ("kind", "algorithm", "parameters")
        )
        if state["kind"] != TRAINING_STATE_KIND:
            raise ValueError(f"{os.fspath(self.path)!r} is not a flowrl training checkpoint")
        return state

    def resume(self, model: BaseAlgorithm, state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore ``model`` from the checkpoint file (or ``state``); return the state."""
        state = self.load() if state is None else state
        try:
            restore_training_state(model, state)
        except ValueError as err:
            raise ValueError(f"{os.fspath(self.path)!r}: {err}") from None
        self.latest = state
        self._last_write = model.num_timesteps
        self._resumed_at = model.num_timesteps
        return state

    def _capture(self) -> dict[str, Any]:
        return training_state(self.model, self.extra() if self.extra is not None else None)

    def _on_training_start(self) -> None:
        if self._last_write is None:
            self._last_write = self.model.num_timesteps
        if self._resumed_at is not None:
            from torch.utils.tensorboard import SummaryWriter

            # SB3 continues the same TensorBoard run (reset_num_timesteps=False); purge_step
            # hides what the interrupted session logged after the step resumed from.
            for output in self.model.logger.output_formats:
                if isinstance(output, TensorBoardOutputFormat):
                    log_dir = output.writer.log_dir
                    output.writer.close()
                    output.writer = SummaryWriter(log_dir=log_dir, purge_step=self._resumed_at)
            self._resumed_at = None

    def _on_rollout_start(self) -> None:
        on_policy = isinstance(self.model, OnPolicyAlgorithm)
        due = self.save_freq > 0 and (
            self.model.num_timesteps - (self._last_write or 0) >= self.save_freq
        )
        if on_policy or due:
            self.latest = self._capture()
        if due:
            self.write(self.latest)

    def _on_step(self) -> bool:
        return True

    def write(self, state: dict[str, Any] | None = None) -> None:
        """Write ``state`` (default: a capture now) to the checkpoint file, atomically."""
        state = self._capture() if state is None else state
        atomic_save(state, self.path)
        self._last_write = int(state["counters"].get("num_timesteps", 0))
        if self.verbose >= 1:
            print(f"checkpoint at {self._last_write} steps -> {self.path}")

    def save_latest(self) -> bool:
        """Write the state to resume from after an interruption; False if there is none.

        On-policy learners: the latest update boundary (a half-collected rollout is dropped).
        Off-policy learners: the state now (the replay buffer keeps every step taken).
        """
        model = getattr(self, "model", None)  # set when learn starts
        if model is not None and not isinstance(model, OnPolicyAlgorithm):
            self.latest = self._capture()
        if self.latest is None:
            return False
        self.write(self.latest)
        return True
