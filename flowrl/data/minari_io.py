"""Conversion between Minari datasets and flat :class:`~flowrl.data.datasets.OfflineDataset`.

Minari stores episodes, each with T+1 observations for T actions; flowrl works on flat
transition arrays. minari is imported inside the functions only, so ``import flowrl.data``
stays light and works without it.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.envs.registration import EnvSpec

from flowrl.data.datasets import OfflineDataset

if TYPE_CHECKING:
    import minari

_INSTALL_HINT = 'Minari support needs the minari package: pip install "minari[hdf5]"'
_DEFAULT_ROOT = os.path.join("~", ".minari", "datasets")
# Fields save_minari needs to rebuild Minari's per-episode layout.
_SAVE_KEYS = ("next_observations", "rewards", "terminals", "timeouts")


def _import_minari() -> Any:
    """Imports minari, turning a missing install into an actionable error."""
    try:
        import minari
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return minari


def _datasets_root() -> str:
    """Where minari looks for local datasets, as it resolves it."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        return f"{root} (from MINARI_DATASETS_PATH)"
    return f"{os.path.expanduser(_DEFAULT_ROOT)} (the default; set MINARI_DATASETS_PATH to change)"


def _local_ids(minari_module: Any, limit: int = 10) -> str:
    """Lists a few local dataset ids for error messages; never fails."""
    try:
        with warnings.catch_warnings():
            # Misconfigured folders produce warnings that would drown the actual error.
            warnings.simplefilter("ignore")
            ids = sorted(minari_module.list_local_datasets())
    except Exception:  # best effort: this only decorates an error message
        return ""
    if not ids:
        return " No local datasets were found there."
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f" Local datasets: {ids[:limit]}{more}."


def _check_flat_box(what: str, space: gymnasium.spaces.Space) -> None:
    """Raises unless ``space`` is a 1-D Box, which is all flowrl's flat arrays can hold."""
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return
    raise ValueError(
        f"flowrl needs flat Box {what}s of shape (D,), but the dataset's {what} space is "
        f"{space}: flatten first (e.g. collect with gymnasium.wrappers.FlattenObservation, or "
        "flatten the arrays yourself and use OfflineDataset.from_dict)"
    )


def load_minari(dataset: str | minari.MinariDataset) -> OfflineDataset:
    """Flattens a Minari dataset into flat transition arrays.

    Per episode, Minari's T+1 observations become ``observations = obs[:-1]`` and
    ``next_observations = obs[1:]``; ``terminations`` become ``terminals`` and
    ``truncations`` become ``timeouts``. Episodes are concatenated in dataset order.

    Args:
        dataset: A local dataset id (read from ``MINARI_DATASETS_PATH``, default
            ``~/.minari/datasets``; this never downloads) or an already loaded
            ``minari.MinariDataset`` (e.g. a filtered one).

    Returns:
        The flat dataset with every key present.

    Raises:
        ImportError: minari is not installed.
        FileNotFoundError: No local dataset with that id.
        ValueError: The observation or action space is not a flat Box, or the dataset is empty.
    """
    minari_module = _import_minari()
    if isinstance(dataset, str):
        try:
            dataset = minari_module.load_dataset(dataset)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"no local Minari dataset {dataset!r} under {_datasets_root()}. Download it "
                f"with `minari download {dataset}` (or minari.download_dataset), or point "
                f"MINARI_DATASETS_PATH at the folder that holds it.{_local_ids(minari_module)}"
            ) from err
    elif not isinstance(dataset, minari_module.MinariDataset):
        raise TypeError(
            f"load_minari expects a dataset id or a minari.MinariDataset, got "
            f"{type(dataset).__name__}"
        )
    _check_flat_box("observation", dataset.observation_space)
    _check_flat_box("action", dataset.action_space)

    parts: dict[str, list[np.ndarray]] = {
        "observations": [],
        "next_observations": [],
        "actions": [],
        "rewards": [],
        "terminals": [],
        "timeouts": [],
    }
    for episode in dataset.iterate_episodes():
        obs = np.asarray(episode.observations)
        steps = len(episode.rewards)
        if obs.shape[0] != steps + 1:
            raise ValueError(
                f"episode {episode.id} of {dataset.id} has {obs.shape[0]} observations for "
                f"{steps} steps, expected {steps + 1}: the dataset is malformed"
            )
        if steps == 0:
            continue  # a reset with no step holds no transition
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions).reshape(steps, -1))
        parts["rewards"].append(np.asarray(episode.rewards))
        parts["terminals"].append(np.asarray(episode.terminations))
        parts["timeouts"].append(np.asarray(episode.truncations))
    if sum(len(rewards) for rewards in parts["rewards"]) == 0:
        raise ValueError(f"Minari dataset {dataset.id} holds no steps")
    return OfflineDataset(**{key: np.concatenate(arrays) for key, arrays in parts.items()})


def _box_for(data: np.ndarray, unit: bool) -> gymnasium.spaces.Box:
    """A float32 Box of shape (D,): [-1, 1] when ``unit``, else unbounded."""
    bound = 1.0 if unit else np.inf
    return gymnasium.spaces.Box(-bound, bound, shape=(data.shape[1],), dtype=np.float32)


def save_minari(
    data: OfflineDataset,
    dataset_id: str,
    env: str | gymnasium.Env | EnvSpec | None = None,
    *,
    algorithm_name: str = "flowrl",
    **metadata: Any,
) -> minari.MinariDataset:
    """Writes a flat dataset as a local Minari dataset (under ``MINARI_DATASETS_PATH``).

    Episodes end at rows where ``terminals | timeouts`` is true; a final unfinished episode is
    stored as truncated, so after a round trip its last ``timeouts`` entry reads True.

    Args:
        data: The dataset; ``next_observations``, ``rewards``, ``terminals`` and ``timeouts``
            must be present, and within an episode ``next_observations[i]`` must equal
            ``observations[i + 1]`` (Minari keeps one observation sequence per episode).
        dataset_id: New id of the form ``(namespace/)name-v<version>``, e.g.
            ``"flowrl/pendulum-expert-v0"``; a namespace needs at least two characters and
            the version suffix is required. Existing datasets are never overwritten.
        env: The env the data came from (id, instance or spec). It is recorded in the dataset
            so ``recover_environment`` works, and the data is checked against its spaces. When
            None, the spaces are built from the data: an unbounded observation Box, and an
            action Box of [-1, 1] if every action lies in it, else unbounded.
        algorithm_name: Recorded as the dataset's ``algorithm_name``.
        **metadata: Passed on to ``minari.create_dataset_from_buffers``, e.g. ``author``,
            ``author_email``, ``code_permalink``, ``description``, ``eval_env``,
            ``ref_min_score``, ``ref_max_score``, ``requirements``.

    Returns:
        The created ``minari.MinariDataset``.

    Raises:
        ImportError: minari is not installed.
        ValueError: Fields are missing, the observation chain breaks inside an episode, the
            data does not fit ``env``, the id is malformed or already taken.
        TypeError: An unknown metadata keyword.
    """
    minari_module = _import_minari()
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id

    # Everything is validated before calling minari: once it has created the dataset folder,
    # a failure leaves the id taken.
    missing = [key for key in _SAVE_KEYS if getattr(data, key) is None]
    if missing:
        raise ValueError(
            f"save_minari needs {list(_SAVE_KEYS)} to rebuild episodes, but {missing} are "
            "missing from the dataset"
        )
    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"invalid Minari dataset id {dataset_id!r}: ids look like '(namespace/)name-v0', "
            "with the version suffix required and a namespace of at least two characters"
        ) from err
    accepted = set(inspect.signature(minari_module.create_dataset_from_buffers).parameters)
    reserved = {"dataset_id", "buffer", "env", "algorithm_name"}
    unknown = sorted(set(metadata) - (accepted - reserved))
    if unknown:
        raise TypeError(
            f"save_minari got unknown metadata {unknown}; accepted: {sorted(accepted - reserved)}"
        )

    assert data.next_observations is not None  # for type checkers; checked above
    assert data.rewards is not None and data.terminals is not None
    assert data.timeouts is not None
    truncations = data.timeouts.copy()
    if not (data.terminals[-1] or truncations[-1]):
        truncations[-1] = True
    ends = data.terminals | truncations
    broken = np.flatnonzero(
        ~ends[:-1] & ~(data.next_observations[:-1] == data.observations[1:]).all(axis=1)
    )
    if broken.size:
        raise ValueError(
            f"next_observations[i] != observations[i + 1] at {broken.size} rows that end no "
            f"episode (first i = {int(broken[0])}): Minari stores one observation sequence per "
            "episode, so mark those rows as episode ends (timeouts[i] = True) first"
        )

    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    buffers = [
        EpisodeBuffer(
            observations=np.concatenate(
                [data.observations[start:stop], data.next_observations[stop - 1 : stop]]
            ),
            actions=data.actions[start:stop],
            rewards=data.rewards[start:stop],
            terminations=data.terminals[start:stop],
            truncations=truncations[start:stop],
            # An empty dict rather than None: minari's EpisodeData repr fails on None infos.
            infos={},
        )
        for start, stop in zip(starts, stops, strict=True)
    ]

    # Explicit spaces in metadata win, as they do inside minari.
    spaces: dict[str, Any] = {
        "observation_space": metadata.pop("observation_space", None),
        "action_space": metadata.pop("action_space", None),
    }
    made_env: gymnasium.Env | None = None
    if env is None:
        if spaces["observation_space"] is None:
            spaces["observation_space"] = _box_for(data.observations, unit=False)
        if spaces["action_space"] is None:
            unit = bool(np.all(np.abs(data.actions) <= 1.0))
            spaces["action_space"] = _box_for(data.actions, unit=unit)
    else:
        # Made once here, both to check the data and to hand to minari, which would otherwise
        # make its own copy from a str or EnvSpec.
        if not isinstance(env, gymnasium.Env):
            env = made_env = gymnasium.make(env)
        for key in spaces:
            if spaces[key] is None:
                spaces[key] = getattr(env, key)
    try:
        data.check_spaces(spaces["observation_space"], spaces["action_space"])
        with warnings.catch_warnings():
            # minari warns for every metadata field left unset; callers who care pass them.
            warnings.filterwarnings("ignore", message=r".*is set to None", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"env_spec is None", category=UserWarning)
            return minari_module.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env,
                algorithm_name=algorithm_name,
                **spaces,
                **metadata,
            )
    finally:
        if made_env is not None:
            made_env.close()
