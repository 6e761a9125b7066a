"""Offline RL datasets in the D4RL layout: validation, storage and minibatch sampling.

An :class:`OfflineDataset` holds flat arrays with one row per environment step, the layout
D4RL popularised (``observations``, ``actions``, ``rewards``, ``next_observations``,
``terminals``, ``timeouts``). Everything is validated once, on construction, so the training
code downstream can trust shapes, dtypes and finiteness without re-checking.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

KEYS: tuple[str, ...] = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
)
"""Every array key an :class:`OfflineDataset` knows, in storage order."""

REQUIRED_KEYS: tuple[str, ...] = ("observations", "actions")
"""Keys that every dataset must have; the others are optional."""

_FLAG_KEYS = ("terminals", "timeouts")
_VECTOR_KEYS = ("rewards", "terminals", "timeouts")

# Actions a hair outside the box come from float round-off in whoever wrote the dataset;
# only violations beyond this are treated as a real mismatch with the env.
ACTION_BOUND_TOLERANCE = 1e-4


def _to_numpy(key: str, value: Any) -> np.ndarray:
    """Converts one dataset field (numpy array, torch tensor or sequence) to a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"{key} must hold numbers or booleans, got dtype {array.dtype}: "
            "convert it to a numeric array first"
        )
    return array


def _to_float32(array: np.ndarray) -> np.ndarray:
    """Casts to float32; overflow becomes inf, which the finiteness check then reports."""
    with np.errstate(over="ignore"):
        return array.astype(np.float32, copy=False)


def _check_finite(key: str, array: np.ndarray) -> None:
    """Raises if ``array`` holds NaN or inf, naming how many and the first bad row."""
    finite = np.isfinite(array)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))
    raise ValueError(
        f"{key} has {int((~finite).sum())} non-finite values (NaN or inf, possibly a float64 "
        f"value beyond the float32 range), first at row {int(bad_rows[0])}: drop or repair "
        "those rows before building the dataset"
    )


@dataclass(eq=False, repr=False)
class OfflineDataset:
    """Transitions of an offline RL dataset in the D4RL layout (flat arrays, one row a step).

    The constructor validates every present array and converts floats to float32 and flags to
    bool; it raises ``ValueError`` with a message naming the offending key otherwise.

    Attributes:
        observations: (N, Do) float32 observations.
        actions: (N, Da) float32 actions taken at ``observations``.
        rewards: (N,) float32 rewards, or None.
        next_observations: (N, Do) float32 observations after each step, or None.
        terminals: (N,) bool, True where the episode ended in a terminal state, or None.
        timeouts: (N,) bool, True where the episode was cut short (time limit), or None.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray | None = None
    next_observations: np.ndarray | None = None
    terminals: np.ndarray | None = None
    timeouts: np.ndarray | None = None

    def __post_init__(self) -> None:
        obs = _to_numpy("observations", self.observations)
        act = _to_numpy("actions", self.actions)
        for key, array, dim in (("observations", obs, "Do"), ("actions", act, "Da")):
            if array.ndim != 2:
                hint = " (use x[:, None] for a single feature)" if array.ndim == 1 else ""
                raise ValueError(f"{key} must have shape (N, {dim}), got {array.shape}{hint}")
            if array.shape[1] == 0:
                raise ValueError(f"{key} must have at least one feature, got {array.shape}")
        n = obs.shape[0]
        if n == 0:
            raise ValueError("dataset is empty: observations has 0 rows, need at least one")
        if act.shape[0] != n:
            raise ValueError(
                f"actions has {act.shape[0]} rows but observations has {n}: every array "
                "needs one row per step"
            )
        self.observations = _to_float32(obs)
        self.actions = _to_float32(act)

        if self.next_observations is not None:
            nxt = _to_numpy("next_observations", self.next_observations)
            if nxt.shape != obs.shape:
                raise ValueError(
                    f"next_observations must have the shape of observations {obs.shape}, "
                    f"got {nxt.shape}"
                )
            self.next_observations = _to_float32(nxt)

        for key in _VECTOR_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            array = _to_numpy(key, value)
            if array.shape != (n,):
                hint = " (use x.reshape(-1) for an (N, 1) column)" if array.size == n else ""
                raise ValueError(f"{key} must have shape (N,) = ({n},), got {array.shape}{hint}")
            if key in _FLAG_KEYS:
                # A float 0.5 would silently become True; flags must really be 0/1.
                if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
                    raise ValueError(f"{key} must hold only 0/1 or booleans")
                array = array.astype(np.bool_, copy=False)
            else:
                array = _to_float32(array)
            setattr(self, key, array)

        # Checked after the float32 cast so float64 values that overflow float32 are caught too.
        for key in ("observations", "actions", "rewards", "next_observations"):
            value = getattr(self, key)
            if value is not None:
                _check_finite(key, value)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def __repr__(self) -> str:
        present = [key for key in KEYS if getattr(self, key) is not None]
        return (
            f"OfflineDataset(N={len(self)}, Do={self.obs_dim}, Da={self.action_dim}, "
            f"keys={present})"
        )

    @property
    def obs_dim(self) -> int:
        """Observation dimension Do."""
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        """Action dimension Da."""
        return int(self.actions.shape[1])

    def episode_ends(self) -> np.ndarray:
        """Rows that end an episode (``terminals | timeouts``), shape (E,), ascending.

        A last, unfinished episode (its final row flagged neither way) has no entry.

        Raises:
            ValueError: The dataset has no ``terminals`` or no ``timeouts``.
        """
        if self.terminals is None or self.timeouts is None:
            raise ValueError("finding episodes needs terminals and timeouts in the dataset")
        return np.flatnonzero(self.terminals | self.timeouts)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Returns the present arrays keyed by their names in :data:`KEYS` (no copies)."""
        return {key: getattr(self, key) for key in KEYS if getattr(self, key) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, np.ndarray | torch.Tensor]) -> OfflineDataset:
        """Builds a dataset from a mapping of arrays or tensors (e.g. a D4RL-style dict).

        Args:
            data: Must hold ``observations`` and ``actions``; the other keys of :data:`KEYS` are
                optional and unknown keys are ignored. Torch tensors are converted to numpy.

        Returns:
            The validated dataset.

        Raises:
            KeyError: A required key is missing.
            ValueError: An array has the wrong shape or non-finite values.
        """
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise KeyError(
                f"dataset is missing required keys {missing}: found {sorted(data)}, "
                f"required {list(REQUIRED_KEYS)} (optional: {list(KEYS[2:])})"
            )
        return cls(**{key: data[key] for key in KEYS if key in data})

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> OfflineDataset:
        """Loads a dataset written by :meth:`save_npz` (or any ``.npz`` with the same keys).

        Args:
            path: File to read.

        Returns:
            The validated dataset.

        Raises:
            FileNotFoundError: No file at ``path``.
            ValueError: The file is damaged or truncated, not an ``.npz``, or holds pickled
                (object) arrays, which are refused unread (they could run code).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no dataset file at {path}")
        # allow_pickle=False: an npz from elsewhere must not be able to run code on load.
        try:
            with np.load(path, allow_pickle=False) as archive:
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ValueError("it holds a single array (.npy), not named arrays")
                arrays = {key: archive[key] for key in archive.files}
        except ValueError as err:
            if "Object arrays" in str(err):
                raise ValueError(
                    f"{path} holds pickled (object) arrays; flowrl reads only plain numeric "
                    "arrays from datasets (unpickling a file from elsewhere could run code)"
                ) from None
            if "pickle" in str(err):
                raise ValueError(
                    f"{path} is not an .npz archive: it is damaged, or a pickle file, which "
                    "flowrl refuses unread (unpickling a file from elsewhere could run code)"
                ) from None
            raise ValueError(f"{path} is not a readable dataset .npz: {err}") from None
        except (OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{path} is not a readable dataset .npz: the file is damaged or truncated "
                f"({type(err).__name__}: {err})"
            ) from None
        try:
            return cls.from_dict(arrays)
        except KeyError as err:
            raise KeyError(f"{path}: {err.args[0]}") from None

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Writes the present arrays to a compressed ``.npz`` file, creating parent folders.

        The file is written at exactly ``path`` (numpy would otherwise append ``.npz`` to names
        that lack it).

        Args:
            path: Destination file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            np.savez_compressed(file, **self.to_dict())

    def check_spaces(
        self, observation_space: gymnasium.spaces.Space, action_space: gymnasium.spaces.Space
    ) -> None:
        """Checks that the dataset fits an environment's spaces before training on it.

        Args:
            observation_space: The env's observation space; must be a Box of shape (Do,).
            action_space: The env's action space; must be a Box of shape (Da,) that holds every
                dataset action up to :data:`ACTION_BOUND_TOLERANCE`.

        Raises:
            ValueError: A space is not a Box, a shape differs, or actions leave the box.
        """
        for what, space in (("observation", observation_space), ("action", action_space)):
            if not isinstance(space, gymnasium.spaces.Box):
                raise ValueError(
                    f"flowrl needs continuous Box spaces, but the env's {what} space is "
                    f"{type(space).__name__}: {space}"
                )
        if observation_space.shape != (self.obs_dim,):
            raise ValueError(
                f"dataset observations have Do={self.obs_dim} but the env's observation space "
                f"has shape {observation_space.shape}: was the dataset made for another env?"
            )
        if action_space.shape != (self.action_dim,):
            raise ValueError(
                f"dataset actions have Da={self.action_dim} but the env's action space has "
                f"shape {action_space.shape}: was the dataset made for another env?"
            )
        low = action_space.low.astype(np.float64)
        high = action_space.high.astype(np.float64)
        actions = self.actions.astype(np.float64)
        violation = np.maximum(np.maximum(low - actions, actions - high), 0.0)
        bad = violation > ACTION_BOUND_TOLERANCE
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} action values in {int(bad.any(axis=1).sum())} rows lie "
                f"outside the env's action box [{low.min()}, {high.max()}] (max violation "
                f"{float(violation.max()):.4g}): clip them, e.g. np.clip(actions, low, high), "
                "or check that the dataset was made for this env"
            )

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples random rows with replacement.

        Args:
            batch_size: Number of rows B.
            generator: Torch generator for reproducible draws; the global RNG when None.
            device: Device of the returned tensors.

        Returns:
            (observations (B, Do), actions (B, Da)), both float32.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rng_device = generator.device if generator is not None else "cpu"
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=rng_device).cpu()
        # Index in numpy so only the B sampled rows are copied (and read-only arrays work).
        rows = idx.numpy()
        obs = torch.from_numpy(self.observations[rows]).to(device)
        act = torch.from_numpy(self.actions[rows]).to(device)
        return obs, act


def load_dataset(
    source: str | os.PathLike[str] | Mapping[str, Any] | OfflineDataset,
) -> OfflineDataset:
    """Loads a dataset from whatever the user pointed at.

    Args:
        source: An :class:`OfflineDataset` (returned as is); a mapping of arrays (see
            :meth:`OfflineDataset.from_dict`); a path object or a string ending in ``.npz``
            (see :meth:`OfflineDataset.load_npz`); any other string is a local Minari dataset id
            such as ``"mujoco/hopper/medium-v0"`` (see :func:`flowrl.data.minari_io.load_minari`).

    Returns:
        The validated dataset.
    """
    if isinstance(source, OfflineDataset):
        return source
    if isinstance(source, Mapping):
        return OfflineDataset.from_dict(source)
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and source.lower().endswith(".npz")
    ):
        return OfflineDataset.load_npz(source)
    if isinstance(source, str):
        # Imported here: minari_io imports this module.
        from flowrl.data.minari_io import load_minari

        return load_minari(source)
    raise TypeError(
        "load_dataset expects an OfflineDataset, a mapping of arrays, a .npz path or a Minari "
        f"dataset id, got {type(source).__name__}"
    )
