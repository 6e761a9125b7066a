"""Action chunks of an offline dataset: the data side of :class:`flowrl.envs.ActionChunk`.

A policy that acts in chunks of Ta actions is behaviour-cloned on targets that are the Ta
actions the dataset's policy took from each state on. :func:`chunk_actions` builds those
targets from a per-step dataset in the D4RL layout, without crossing episode boundaries.
"""

from __future__ import annotations

import numpy as np

from flowrl.data.datasets import OfflineDataset


def check_chunk(chunk: int) -> int:
    """``chunk`` as an int, the number of actions per decision Ta.

    Raises:
        ValueError: ``chunk`` is not an integer >= 1.
    """
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return int(chunk)


def chunk_actions(data: OfflineDataset, chunk: int) -> OfflineDataset:
    """One row per step t whose action is the chunk (a_t, …, a_{t+Ta-1}) of its episode.

    Near an episode's end the chunk is padded with the episode's last action; the env
    wrapper drops the padded part anyway, since the episode ends first. The other fields
    describe the chunk as :class:`~flowrl.envs.ActionChunk` plays it: the reward is the sum
    over the chunk's real steps, ``next_observations`` / ``terminals`` / ``timeouts`` are
    those of its last real step.

    Args:
        data: N per-step transitions with ``terminals`` and ``timeouts`` (episodes end where
            either is set; the last row ends the last, possibly unfinished, episode).
        chunk: Ta >= 1 (1 returns the data unchanged).

    Returns:
        A dataset of N rows: observations (N, Do), actions (N, Ta * Da).

    Raises:
        ValueError: ``chunk`` < 1, or the dataset has no episode flags to find its episodes.
    """
    chunk = check_chunk(chunk)
    if chunk == 1:
        return data
    n = len(data)
    ends = data.episode_ends()
    if ends.size == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)
    rows = np.arange(n)
    last = ends[np.searchsorted(ends, rows)]  # (N,) the last row of each row's episode
    # (N, Ta) row of every action of a chunk, the episode's last one past its end
    index = np.minimum(rows[:, None] + np.arange(chunk)[None, :], last[:, None])
    actions = data.actions[index].reshape(n, chunk * data.action_dim)
    stop = index[:, -1]  # (N,) last real step of each chunk
    fields: dict[str, np.ndarray | None] = {
        "next_observations": None
        if data.next_observations is None
        else data.next_observations[stop],
        "terminals": data.terminals[stop],
        "timeouts": data.timeouts[stop],
        "rewards": None,
    }
    if data.rewards is not None:
        # sum of rewards[t..stop] from cumulative sums, in float64 to keep the sums exact
        cumulative = np.concatenate([[0.0], np.cumsum(data.rewards, dtype=np.float64)])
        fields["rewards"] = cumulative[stop + 1] - cumulative[rows]
    return OfflineDataset(observations=data.observations, actions=actions, **fields)
