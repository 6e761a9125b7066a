"""PointMaze exploration and goal-reaching envs with a fixed start and goal, and a coverage metric.

The envs are gymnasium-robotics' ``PointMazeEnv`` (a force-actuated ball in a MuJoCo maze) on
the D4RL layouts ``umaze``, ``medium`` and ``large`` (:data:`MAZE_NAMES`), with one fixed reset
cell (a free corner) and one fixed goal cell (the free cell farthest from it along the maze):

* ``task="explore"``: reward-free exploration; the episode never terminates, it is truncated
  after ``max_episode_steps``. The env still returns its sparse goal reward: an exploring
  learner must not read it.
* ``task="goal"``: reach the goal; the episode terminates with reward 1 within 0.45 of it, and
  ``info["is_success"]`` says whether the ball is there.

Observations are flat float32 ``[x, y, vx, vy]`` and ``info["xy"]`` holds the position at
every step and reset. As in gymnasium-robotics, each reset adds uniform noise of ±0.25 per axis
to both the start and the goal point (the cells stay fixed), one step is 0.01 s of simulation
(100 steps per second), and actions in [-1, 1]² are forces on the ball.

The envs need gymnasium-robotics (``pip install "flowrl-policies[mazes]"``),
imported on first use; the layouts, :func:`maze_coverage` and :func:`plot_visits` do not.

    env = make_point_maze("medium")  # or gymnasium.make("flowrl/PointMaze-Medium-v0")
    ...                              # collect every info["xy"] into positions, (N, 2)
    stats = maze_coverage(positions, "medium")  # share of free cells visited, entropy

The ids are registered when ``flowrl.envs`` is imported; processes that have not imported it
(e.g. the workers of SB3's ``SubprocVecEnv``) find them as
``"flowrl.envs:flowrl/PointMaze-Medium-v0"``, gymnasium's "module:id" form.

Coordinates follow gymnasium-robotics with ``maze_size_scaling=1``: cell (i, j) of a maze with
``rows`` × ``cols`` cells has its centre at x = (j + 0.5) − cols/2, y = rows/2 − (i + 0.5), so
row 0 is the top of the maze (largest y) and each cell is 1 × 1.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from flowrl.metrics import normalized_entropy

__all__ = [
    "DEFAULT_EPISODE_STEPS",
    "MAZE_NAMES",
    "TASKS",
    "MazeLayout",
    "PointMazeWrapper",
    "coverage_from_visits",
    "make_point_maze",
    "maze_coverage",
    "maze_layout",
    "plot_visits",
]

MAZE_NAMES: tuple[str, ...] = ("umaze", "medium", "large")
"""The maze layouts, smallest first."""

TASKS: tuple[str, ...] = ("explore", "goal")
"""The tasks of :func:`make_point_maze`."""

DEFAULT_EPISODE_STEPS: dict[str, int] = {"umaze": 300, "medium": 600, "large": 800}
"""Steps per episode by maze: gymnasium-robotics' ``PointMaze_*-v3`` time limits."""

# The wall layouts of gymnasium-robotics' U_MAZE, MEDIUM_MAZE and LARGE_MAZE (D4RL's maze2d
# layouts): 1 = wall, 0 = free. Kept here so the coverage metric needs no gymnasium-robotics;
# the tests check them against gymnasium-robotics wall for wall.
_WALLS: dict[str, list[list[int]]] = {
    "umaze": [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}

# The reset cell of every maze: the top-left free corner, where D4RL's "diverse" maps of
# gymnasium-robotics put their reset cell "r" as well.
_RESET_CELLS: dict[str, tuple[int, int]] = {"umaze": (1, 1), "medium": (1, 1), "large": (1, 1)}

_GOAL_THRESHOLD = 0.45  # gymnasium-robotics' success distance (not configurable there)
_MAZES_HINT = 'pip install "flowrl-policies[mazes]"'


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one bool
class MazeLayout:
    """A maze's walls, its fixed reset and goal cells, and the cell ↔ position conversion.

    Attributes:
        name: The maze's name (one of :data:`MAZE_NAMES`).
        walls: (rows, cols) int array, 1 = wall, 0 = free.
        reset_cell: (row, col) of the cell every episode starts in.
        goal_cell: (row, col) of the goal: the free cell farthest from ``reset_cell`` by the
            shortest path through free cells (ties: the farther in straight line, then the
            first in row-major order).
        free_cells: Every free (row, col), in row-major order.
    """

    name: str
    walls: np.ndarray = field(repr=False)
    reset_cell: tuple[int, int]
    goal_cell: tuple[int, int]
    free_cells: list[tuple[int, int]] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the maze, walls included."""
        return (int(self.walls.shape[0]), int(self.walls.shape[1]))

    @property
    def num_free(self) -> int:
        """Number of free cells."""
        return len(self.free_cells)

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cells that positions fall in.

        Positions outside the maze (only by numerical error: the outer cells are walls) go to
        the nearest cell by clipping the indices.

        Args:
            xy: Positions, shape (N, 2) (or (2,) for one), in the env's coordinates.

        Returns:
            ``(rows, cols)``: two (N,) int arrays of cell indices.
        """
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        rows, cols = self.shape
        i = np.floor(rows / 2 - xy[:, 1]).astype(np.int64)
        j = np.floor(xy[:, 0] + cols / 2).astype(np.int64)
        return np.clip(i, 0, rows - 1), np.clip(j, 0, cols - 1)

    def cell_xy(self, cell: tuple[int, int] | np.ndarray) -> np.ndarray:
        """The centre of a cell (or of several).

        Args:
            cell: ``(row, col)``, or an (N, 2) array of them.

        Returns:
            The centre's ``(x, y)``, float64 of shape (2,), or (N, 2) for N cells.
        """
        cell = np.asarray(cell, dtype=np.float64)
        rows, cols = self.shape
        x = cell[..., 1] + 0.5 - cols / 2
        y = rows / 2 - (cell[..., 0] + 0.5)
        return np.stack([x, y], axis=-1)

    def maze_map(self) -> list[list[int | str]]:
        """The layout as a gymnasium-robotics ``maze_map``: reset cell "r", goal cell "g"."""
        maze_map: list[list[int | str]] = [[int(v) for v in row] for row in self.walls]
        maze_map[self.reset_cell[0]][self.reset_cell[1]] = "r"
        maze_map[self.goal_cell[0]][self.goal_cell[1]] = "g"
        return maze_map


def _check_name(maze: str) -> str:
    """Returns ``maze`` if it names a layout, else raises ValueError listing the known names."""
    if maze not in _WALLS:
        raise ValueError(f"unknown maze {maze!r}: choose one of {', '.join(MAZE_NAMES)}")
    return maze


def _path_distances(walls: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Steps between ``start`` and every free cell it reaches (4-neighbour BFS)."""
    distances = {start: 0}
    queue = deque([start])
    while queue:
        row, col = queue.popleft()
        for d_row, d_col in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            cell = (row + d_row, col + d_col)
            inside = 0 <= cell[0] < walls.shape[0] and 0 <= cell[1] < walls.shape[1]
            if inside and walls[cell] == 0 and cell not in distances:
                distances[cell] = distances[(row, col)] + 1
                queue.append(cell)
    return distances


def maze_layout(name: str | MazeLayout) -> MazeLayout:
    """The layout of a maze: walls, reset and goal cells, free cells.

    Args:
        name: One of :data:`MAZE_NAMES` (a :class:`MazeLayout` is returned as is).

    Returns:
        The maze's :class:`MazeLayout`.

    Raises:
        ValueError: For an unknown maze name.
    """
    if isinstance(name, MazeLayout):
        return name
    walls = np.array(_WALLS[_check_name(name)], dtype=np.int64)
    walls.setflags(write=False)
    reset = _RESET_CELLS[name]
    distances = _path_distances(walls, reset)

    def farthest_first(cell: tuple[int, int]) -> tuple[int, float, int, int]:
        straight = math.hypot(cell[0] - reset[0], cell[1] - reset[1])
        return (-distances[cell], -straight, cell[0], cell[1])

    goal = min(distances, key=farthest_first)
    free = [(int(i), int(j)) for i, j in zip(*np.nonzero(walls == 0), strict=True)]
    return MazeLayout(name=name, walls=walls, reset_cell=reset, goal_cell=goal, free_cells=free)


# ---------------------------------------------------------------------------------- coverage


def _visit_grid(xy: np.ndarray, layout: MazeLayout) -> np.ndarray:
    """(rows, cols) int64 counts of the positions in every cell, wall cells included."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return np.zeros(layout.shape, dtype=np.int64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"need positions of shape (N, 2), got {xy.shape}")
    rows, cols = layout.cell_of(xy)
    flat = np.bincount(rows * layout.shape[1] + cols, minlength=layout.walls.size)
    return flat.reshape(layout.shape).astype(np.int64)


def coverage_from_visits(counts: np.ndarray, maze: str | MazeLayout) -> dict[str, Any]:
    """Coverage statistics of a histogram of visits per cell (see :func:`maze_coverage`).

    Args:
        counts: (rows, cols) non-negative visit counts of every cell, wall cells included
            (their counts become ``wall_visits``).
        maze: A maze name or layout.

    Returns:
        The dict of :func:`maze_coverage`.

    Raises:
        ValueError: For counts of the wrong shape, or an unknown maze name.
    """
    layout = maze_layout(maze)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != layout.shape:
        raise ValueError(
            f"need counts of shape {layout.shape} for {layout.name}, got {counts.shape}"
        )
    free = layout.walls == 0
    visits = np.where(free, counts, 0)
    free_counts = visits[free]
    total = int(free_counts.sum())
    if total > 0:
        p = free_counts[free_counts > 0] / total
        entropy = float(-(p * np.log(p)).sum()) + 0.0  # no -0.0 for a single cell
    else:
        entropy = 0.0
    return {
        "cells": float((free_counts > 0).sum() / layout.num_free),
        "entropy": entropy,
        "entropy_normalized": normalized_entropy(free_counts),
        "visits": visits,
        "wall_visits": int(counts[~free].sum()),
    }


def maze_coverage(xy: np.ndarray, maze: str | MazeLayout) -> dict[str, Any]:
    """How evenly positions cover a maze's free cells.

    Each position counts for the cell it falls in; positions inside walls (the ball's radius
    lets its centre graze them) count only in ``wall_visits``.

    Args:
        xy: Positions, shape (N, 2) (e.g. every ``info["xy"]`` of a run).
        maze: A maze name or layout.

    Returns:
        A dict with

        * ``cells``: share of free cells visited at least once, in [0, 1];
        * ``entropy``: Shannon entropy (nats) of the visits over the free cells;
        * ``entropy_normalized``: ``entropy / log(number of free cells)``, in [0, 1]
          (1 = every free cell equally often; 0 for no visit);
        * ``visits``: (rows, cols) int64 visits per cell, 0 on walls;
        * ``wall_visits``: positions that fell in wall cells.

    Raises:
        ValueError: For positions not of shape (N, 2), or an unknown maze name.
    """
    layout = maze_layout(maze)
    return coverage_from_visits(_visit_grid(xy, layout), layout)


def plot_visits(
    xy: np.ndarray,
    maze: str | MazeLayout,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Save a PNG of the visited positions (a log-scale density) over the maze's walls.

    The reset cell is marked by a green circle, the goal by a red star.

    Args:
        xy: Positions, shape (N, 2).
        maze: A maze name or layout.
        path: Where to write the PNG (parent folders are created).
        title: The figure's title; None: the maze's name with its coverage.

    Returns:
        The path of the PNG.

    Raises:
        ValueError: For positions not of shape (N, 2), or an unknown maze name.
    """
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.figure import Figure  # no pyplot: no global backend, no figure registry

    layout = maze_layout(maze)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    stats = maze_coverage(xy, layout)
    rows, cols = layout.shape
    extent = (-cols / 2, cols / 2, -rows / 2, rows / 2)
    fig = Figure(figsize=(0.5 * cols + 1.5, 0.5 * rows + 0.8))
    ax = fig.add_subplot()
    per_cell = 10  # density bins per cell side
    density, _, _ = np.histogram2d(
        xy[:, 1],
        xy[:, 0],
        bins=(rows * per_cell, cols * per_cell),
        range=((extent[2], extent[3]), (extent[0], extent[1])),
    )
    if density.max() > 0:
        image = ax.imshow(
            np.ma.masked_equal(density[::-1], 0),  # histogram rows go up in y; image rows down
            extent=extent,
            cmap="viridis",
            norm=LogNorm(vmin=1, vmax=max(density.max(), 2)),
            interpolation="nearest",
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="visits")
    walls = np.ma.masked_equal(layout.walls, 0)
    ax.imshow(walls, extent=extent, cmap=ListedColormap(["0.35"]), interpolation="nearest")
    for cell, style in ((layout.reset_cell, "o"), (layout.goal_cell, "*")):
        x, y = layout.cell_xy(cell)
        ax.plot(x, y, style, color="tab:green" if style == "o" else "tab:red", ms=10, mec="k")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    if title is None:
        title = (
            f"{layout.name}: {len(xy)} positions, {stats['cells']:.0%} of cells, "
            f"H/Hmax {stats['entropy_normalized']:.2f}"
        )
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


# ---------------------------------------------------------------------------------- envs


class PointMazeWrapper(gym.Wrapper):
    """Flat ``[x, y, vx, vy]`` float32 observations and ``info["xy"]`` for a ``PointMazeEnv``.

    The goal is fixed, so the observation leaves out the dict's goal entries. ``info["xy"]``
    is the ball's (2,) float64 position at every reset and step; with ``report_success`` also
    ``info["is_success"]`` (within 0.45 of the goal), as SB3's ``evaluate_policy`` reads it.

    Args:
        env: A gymnasium-robotics ``PointMazeEnv`` (dict observations).
        layout: The maze's layout (kept as :attr:`layout`).
        report_success: Put ``info["is_success"]`` in every info.
    """

    def __init__(self, env: gym.Env, layout: MazeLayout, report_success: bool = False):
        super().__init__(env)
        self.layout = layout
        self.report_success = report_success
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float32)

    def _convert(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        point = np.asarray(obs["observation"])
        info["xy"] = np.array(point[:2], dtype=np.float64)
        if self.report_success:
            info["is_success"] = bool(info["success"])
        return point.astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset in the reset cell (plus the env's uniform noise of ±0.25 per axis)."""
        obs, info = self.env.reset(seed=seed, options=options)
        return self._convert(obs, info), info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """One step of the ball (actions in [-1, 1]² are forces)."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs, info), reward, terminated, truncated, info


def _point_maze_class() -> type:
    """gymnasium-robotics' ``PointMazeEnv``, or an ImportError saying how to install it."""
    try:
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv
    except ImportError as error:
        raise ImportError(
            f"the PointMaze envs need gymnasium-robotics, which is not installed: {_MAZES_HINT}"
        ) from error
    return PointMazeEnv


def _build(
    maze: str, task: str, render_mode: str | None, kwargs: dict[str, Any]
) -> PointMazeWrapper:
    """The wrapped env without a time limit."""
    layout = maze_layout(maze)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    fixed = {"maze_map", "continuing_task"}.intersection(kwargs)
    if fixed:
        raise TypeError(f"{sorted(fixed)} are set by maze and task, not by keyword arguments")
    options = {"reward_type": "sparse", "reset_target": False, **kwargs}
    env = _point_maze_class()(
        maze_map=layout.maze_map(),
        render_mode=render_mode,
        continuing_task=task == "explore",
        **options,
    )
    # gymnasium-robotics writes the maze's MJCF to the temp folder and never removes it: one
    # file per env made. The model is loaded by now.
    with contextlib.suppress(AttributeError, OSError):
        os.remove(env.tmp_xml_file_path)
    return PointMazeWrapper(env, layout, report_success=task == "goal")


def make_point_maze(
    maze: str = "umaze",
    *,
    task: str = "explore",
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    **kwargs: Any,
) -> gym.Env:
    """A PointMaze env with a fixed reset cell and goal (see the module docstring).

    Args:
        maze: One of :data:`MAZE_NAMES`.
        task: ``"explore"`` (never terminates) or ``"goal"`` (terminates at the goal with
            reward 1 and reports ``info["is_success"]``).
        max_episode_steps: Steps per episode (truncation); None: :data:`DEFAULT_EPISODE_STEPS`
            of the maze (300, 600, 800).
        render_mode: gymnasium's render mode (``"rgb_array"``, ``"human"``, …).
        **kwargs: More arguments of gymnasium-robotics' ``PointMazeEnv`` (e.g.
            ``reward_type="dense"``, ``position_noise_range``); ``maze_map`` and
            ``continuing_task`` are set by ``maze`` and ``task``.

    Returns:
        The env, in a ``TimeLimit``: float32 observations of shape (4,), actions in [-1, 1]².

    Raises:
        ValueError: For an unknown maze or task, or ``max_episode_steps`` below 1.
        TypeError: For ``maze_map`` or ``continuing_task`` in ``kwargs``.
        ImportError: If gymnasium-robotics is not installed.
    """
    _check_name(maze)
    steps = DEFAULT_EPISODE_STEPS[maze] if max_episode_steps is None else max_episode_steps
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"max_episode_steps must be an int >= 1, got {max_episode_steps!r}")
    env = _build(maze, task, render_mode, kwargs)
    return gym.wrappers.TimeLimit(env, max_episode_steps=int(steps))


def registered_point_maze(
    maze: str = "umaze", task: str = "explore", render_mode: str | None = None, **kwargs: Any
) -> gym.Env:
    """Entry point of the ``flowrl/PointMaze*`` ids: the env without ``TimeLimit``.

    ``gymnasium.make`` adds the time limit of the registration (or its own
    ``max_episode_steps=`` argument). Arguments as in :func:`make_point_maze`.

    Returns:
        The wrapped ``PointMazeEnv``.
    """
    return _build(maze, task, render_mode, kwargs)
