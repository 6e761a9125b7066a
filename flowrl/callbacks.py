"""Stable-Baselines3 callbacks: a learning curve from periodic evaluations, maze coverage.

* :class:`LearningCurveCallback`: evaluates the policy on a separate env periodically;
* :class:`CoverageCallback`: how much of a PointMaze the training envs have visited
  (:func:`flowrl.envs.maze.maze_coverage` of every ``info["xy"]``), for exploration.

    curve = LearningCurveCallback(make_vec_env("Hopper-v5", seed=1000), eval_freq=10_000)
    model.learn(1_000_000, callback=curve)
    curve.save_csv("curve.csv")   # timesteps, returns of the deterministic and stochastic policy

With ``best_model_path="best_model.zip"`` it also keeps the model of the best evaluation so far
(a model past its peak is common in RL fine-tuning).

Works with any SB3 algorithm (ReinFlow, PPO, SAC, …): evaluation goes through
``model.predict``, so a flow policy is scored both on its deterministic ODE and on its
noisy chain.

    coverage = CoverageCallback("medium", log_freq=10_000)   # on flowrl/PointMaze-Medium-v0
    model.learn(1_000_000, callback=[curve, coverage])
    coverage.save_json("coverage.json")  # share of cells visited and visit entropy over time
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, unwrap_vec_normalize
from stable_baselines3.common.vec_env.vec_normalize import VecNormalize

from flowrl import distributed

if TYPE_CHECKING:
    from flowrl.envs.maze import MazeLayout

__all__ = ["CoverageCallback", "LearningCurveCallback"]


class LearningCurveCallback(BaseCallback):
    """Evaluate on a separate env every ``eval_freq`` env steps and record a learning curve.

    Each evaluation appends one row to :attr:`curve` and writes the same numbers to SB3's
    logger (TensorBoard, stdout, …) under ``eval/``:

    * ``timesteps``: SB3's ``num_timesteps``, steps of training so far (all training envs
      together): env steps, or decisions of a policy acting in chunks;
    * ``env_steps``: env steps of training so far, from ``info["env_steps"]`` where the env
      reports it (:class:`flowrl.envs.ActionChunk` does: Ta per decision), else one per step;
      a model's steps from before this callback first trained count one each; under torchrun
      (where callbacks run on rank 0 only) rank 0's count times the number of ranks;
    * ``time_s``: seconds since training started (evaluations included);
    * ``return_deterministic_mean`` / ``_std``, ``length_deterministic_mean``: episodes of
      ``predict(deterministic=True)``;
    * ``return_stochastic_mean`` / ``_std``, ``length_stochastic_mean``: episodes of
      ``predict(deterministic=False)``;
    * ``success_deterministic_rate`` / ``success_stochastic_rate``: share of episodes whose
      last ``info`` says ``is_success`` (only for envs that report it, e.g. MultiGoal-v0).
    * ``x_velocity_deterministic_mean`` / ``x_velocity_stochastic_mean``: forward speed
      averaged over every evaluation step (only for envs whose ``info`` has ``x_velocity``,
      e.g. gymnasium's Hopper, Walker2d, HalfCheetah, Ant).

    Returns are the env's own rewards as recorded by a ``Monitor`` wrapper inside the eval
    env (so reward normalization of the training env does not change them).

    The best evaluation so far is tracked in :attr:`best_return` and :attr:`best_timesteps`:
    by the deterministic mean return, or the stochastic one when only the stochastic policy
    is evaluated. With ``best_model_path`` the model is saved there whenever an evaluation
    beats the best so far (ties keep the earlier model). It holds the model only: a run that
    normalizes observations with ``VecNormalize`` keeps its latest statistics elsewhere.

    Args:
        eval_env: The evaluation env (a gymnasium env is wrapped in a ``DummyVecEnv``).
            Wrap it in ``Monitor`` (SB3's ``make_vec_env`` does) so returns are exact.
        eval_freq: Env steps of training between evaluations (counted over all training
            envs, like ``total_timesteps``).
        n_eval_episodes: Episodes per evaluation and per mode.
        deterministic: Evaluate the deterministic policy.
        stochastic: Evaluate the stochastic policy.
        evaluate_at_start: Also evaluate before the first training step (the row at the
            starting timestep: e.g. a BC-pretrained policy before fine-tuning).
        best_model_path: Where to save the model of the best evaluation so far (an SB3
            ``.zip``, written atomically: a crash never leaves half a file); None: not saved.
        verbose: 0 silent, 1 one line per evaluation.

    Raises:
        ValueError: For ``eval_freq`` or ``n_eval_episodes`` below 1, when neither mode
            is asked for, or for a ``best_model_path`` not ending in ``.zip``.
    """

    def __init__(
        self,
        eval_env: VecEnv | gym.Env,
        eval_freq: int,
        n_eval_episodes: int = 10,
        deterministic: bool = True,
        stochastic: bool = True,
        evaluate_at_start: bool = True,
        best_model_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ):
        super().__init__(verbose=verbose)
        if eval_freq < 1:
            raise ValueError(f"eval_freq must be >= 1 env step, got {eval_freq}")
        if n_eval_episodes < 1:
            raise ValueError(f"n_eval_episodes must be >= 1, got {n_eval_episodes}")
        if not (deterministic or stochastic):
            raise ValueError("nothing to evaluate: set deterministic=True and/or stochastic=True")
        if best_model_path is not None and Path(best_model_path).suffix != ".zip":
            raise ValueError(
                f"best_model_path must name a .zip file (SB3's save format), got "
                f"{os.fspath(best_model_path)!r}: e.g. best_model.zip"
            )
        if not isinstance(eval_env, VecEnv):
            eval_env = DummyVecEnv([lambda: eval_env])  # type: ignore[list-item, return-value]
        self.eval_env: VecEnv = eval_env
        self.eval_freq = int(eval_freq)
        self.n_eval_episodes = int(n_eval_episodes)
        self.modes = [
            name
            for name, wanted in (("deterministic", deterministic), ("stochastic", stochastic))
            if wanted
        ]
        self.evaluate_at_start = evaluate_at_start
        self.best_model_path = None if best_model_path is None else Path(best_model_path)
        self.best_return: float | None = None  # mean return of the best evaluation so far
        self.best_timesteps: int | None = None  # its timesteps
        self.curve: list[dict[str, float]] = []
        self.eval_seconds = 0.0
        self._start = time.perf_counter()
        self._elapsed_before = 0.0  # seconds of earlier sessions of a resumed run
        self._resumed = False
        self._next_eval = self.eval_freq
        self._last_eval_step: int | None = None
        self.env_steps: int | None = None  # set when training starts

    # ------------------------------------------------------------------ SB3 hooks

    def _init_callback(self) -> None:
        train_norm = unwrap_vec_normalize(self.training_env)
        normalizes_obs = train_norm is not None and train_norm.norm_obs
        if normalizes_obs and unwrap_vec_normalize(self.eval_env) is None:
            raise ValueError(
                "the training env normalizes observations (VecNormalize with norm_obs=True) "
                "but the eval env does not, so the policy would see raw observations: wrap "
                "the eval env in VecNormalize(eval_env, training=False, norm_reward=False)"
            )

    def _on_training_start(self) -> None:
        self._start = time.perf_counter()
        self._next_eval = (self.model.num_timesteps // self.eval_freq + 1) * self.eval_freq
        if self.env_steps is None:
            self.env_steps = int(self.model.num_timesteps)
        # A resumed run's curve already starts where training started.
        if self.evaluate_at_start and not self._resumed:
            self.evaluate()

    def _on_step(self) -> bool:
        # An env that plays several steps per decision says how many (ActionChunk).
        # Under torchrun this callback runs on rank 0, whose envs are 1/W of the run's: its
        # count stands for every rank's (exact without chunks; with them, up to episode ends).
        infos = self.locals.get("infos", [])
        steps = sum(int(i.get("env_steps", 1)) for i in infos) * distributed.world_size()
        self.env_steps = (self.env_steps or 0) + steps
        if self.num_timesteps >= self._next_eval:
            self.evaluate()
            self._next_eval = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq
        return True

    def _on_training_end(self) -> None:
        # The curve always ends at the last step, even between two evaluation points.
        if self._last_eval_step != self.model.num_timesteps:
            self.evaluate()

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        """Evaluate the model now, append the row to :attr:`curve` and log it.

        Returns:
            The row (see the class docstring for its keys).
        """
        start = time.perf_counter()
        self._sync_normalization()
        steps = int(self.model.num_timesteps)
        env_steps = steps if self.env_steps is None else self.env_steps
        row: dict[str, float] = {"timesteps": steps, "env_steps": env_steps}
        for mode in self.modes:
            successes: list[bool] = []
            velocities: list[float] = []

            def record_info(
                local: dict,
                _globals: dict,
                successes: list[bool] = successes,
                velocities: list[float] = velocities,
            ) -> None:
                info = local["info"]
                # Locomotion envs report the torso's forward speed at every step: it tells a
                # policy that runs from one that only stays up for the alive bonus.
                if "x_velocity" in info:
                    velocities.append(float(info["x_velocity"]))
                # The env's own success flag at the end of each episode, where it has one.
                if local["done"] and "is_success" in info:
                    successes.append(bool(info["is_success"]))

            returns, lengths = evaluate_policy(
                self.model,  # type: ignore[arg-type]
                self.eval_env,
                n_eval_episodes=self.n_eval_episodes,
                deterministic=mode == "deterministic",
                return_episode_rewards=True,
                callback=record_info,
            )
            row[f"return_{mode}_mean"] = float(np.mean(returns))
            row[f"return_{mode}_std"] = float(np.std(returns))
            row[f"length_{mode}_mean"] = float(np.mean(lengths))
            if successes:
                row[f"success_{mode}_rate"] = float(np.mean(successes))
            if velocities:
                row[f"x_velocity_{mode}_mean"] = float(np.mean(velocities))
        self.eval_seconds += time.perf_counter() - start
        row["time_s"] = self._elapsed_before + time.perf_counter() - self._start
        self.curve.append(row)
        self._last_eval_step = steps
        best = self._track_best(row)
        for key, value in row.items():
            if key not in ("timesteps", "time_s"):  # env_steps: on TensorBoard too
                self.logger.record(f"eval/{key}", value)
        self.logger.record("time/total_timesteps", steps, exclude="tensorboard")
        self.logger.dump(steps)
        if self.verbose >= 1:
            shown = ", ".join(
                f"{mode} {row[f'return_{mode}_mean']:.2f} ± {row[f'return_{mode}_std']:.2f}"
                for mode in self.modes
            )
            print(f"eval at {steps} steps: return {shown}" + (" (best so far)" if best else ""))
        return row

    def _track_best(self, row: dict[str, float]) -> bool:
        """Record the row if it is the best so far (and save the model); whether it is."""
        score = row[f"return_{self.modes[0]}_mean"]  # deterministic where it is evaluated
        if self.best_return is not None and not score > self.best_return:
            return False
        self.best_return = float(score)
        self.best_timesteps = int(row["timesteps"])
        if self.best_model_path is not None:
            self.best_model_path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.best_model_path.with_name(f"{self.best_model_path.stem}.partial.zip")
            self.model.save(partial)
            os.replace(partial, self.best_model_path)
        return True

    def _sync_normalization(self) -> None:
        """Give the eval env the training env's observation statistics (if both normalize)."""
        train_norm = unwrap_vec_normalize(self.training_env)
        eval_norm: VecNormalize | None = unwrap_vec_normalize(self.eval_env)
        if train_norm is not None and eval_norm is not None and train_norm.norm_obs:
            eval_norm.obs_rms = copy.deepcopy(train_norm.obs_rms)

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """The curve and counters, as plain data (a resumable checkpoint keeps them)."""
        return {
            "curve": [dict(row) for row in self.curve],
            "eval_seconds": self.eval_seconds,
            "elapsed_s": self._elapsed_before + time.perf_counter() - self._start,
            "env_steps": self.env_steps,
            "last_eval_step": self._last_eval_step,
            "best_return": self.best_return,
            "best_timesteps": self.best_timesteps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the curve of a resumed run (call before ``learn``)."""
        self.curve = [dict(row) for row in state["curve"]]
        self.eval_seconds = float(state["eval_seconds"])
        self._elapsed_before = float(state["elapsed_s"])
        self.env_steps = state["env_steps"]
        self._last_eval_step = state["last_eval_step"]
        # Absent from the checkpoints of runs from before best-model keeping.
        self.best_return = state.get("best_return")
        self.best_timesteps = state.get("best_timesteps")
        self._resumed = True

    # ------------------------------------------------------------------ output

    @property
    def last(self) -> dict[str, float]:
        """The latest row of the curve.

        Raises:
            RuntimeError: If nothing was evaluated yet.
        """
        if not self.curve:
            raise RuntimeError("no evaluation yet: train with this callback first")
        return self.curve[-1]

    def save_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the curve as CSV, one row per evaluation (header: the row's keys)."""
        keys: list[str] = []
        for row in self.curve:
            keys += [k for k in row if k not in keys]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.curve)


class CoverageCallback(BaseCallback):
    """Track how much of a maze the training envs visit: share of cells and visit entropy.

    At every step it reads the position of each training env from ``info["xy"]`` (flowrl's
    PointMaze envs put it there: :func:`flowrl.envs.maze.make_point_maze`) and counts it in
    its maze cell; at the end of an episode SB3's ``infos`` still hold the info of the last
    step, so that position counts too (a reset position is not in any info and does not).
    Every ``log_freq`` env steps (SB3's ``num_timesteps``, all envs together) and at the end
    of training it appends a row to :attr:`history`:

    * ``timesteps``: ``num_timesteps``;
    * ``cells``: share of the free cells visited so far;
    * ``entropy``: entropy (nats) of the visits over the free cells;
    * ``entropy_normalized``: that entropy over log(number of free cells), in [0, 1];

    and records the last three in SB3's logger under ``coverage/`` (written with the
    algorithm's own logs). The numbers are those of :func:`flowrl.envs.maze.maze_coverage` of
    every position so far (kept as a running histogram, so a row costs no pass over them).

    Args:
        maze: The maze of the training envs, by name (``"umaze"``, ``"medium"``,
            ``"large"``) or layout.
        log_freq: Env steps between rows of the history.
        keep_points: Keep every position (:meth:`points`, e.g. for
            :func:`flowrl.envs.maze.plot_visits`): 16 bytes per env step; False keeps only
            the histogram.
        verbose: 0 silent, 1 one line per row.

    Raises:
        ValueError: For an unknown maze or ``log_freq`` below 1.
    """

    _CHUNK = 65_536  # rows of the first position buffer; it doubles when full

    def __init__(
        self,
        maze: str | MazeLayout,
        log_freq: int = 1000,
        keep_points: bool = True,
        verbose: int = 0,
    ):
        super().__init__(verbose=verbose)
        from flowrl.envs.maze import maze_layout

        if log_freq < 1:
            raise ValueError(f"log_freq must be >= 1 env step, got {log_freq}")
        self.layout = maze_layout(maze)
        self.log_freq = int(log_freq)
        self.keep_points = keep_points
        self.history: list[dict[str, float]] = []
        self._counts = np.zeros(self.layout.shape, dtype=np.int64)  # every cell, walls too
        self._points = np.empty((0, 2), dtype=np.float64)
        self._num_points = 0
        self._next_log = self.log_freq
        self._last_log_step: int | None = None

    # ------------------------------------------------------------------ SB3 hooks

    def _on_training_start(self) -> None:
        self._next_log = (self.model.num_timesteps // self.log_freq + 1) * self.log_freq

    def _on_step(self) -> bool:
        infos = self.locals.get("infos", [])
        if infos:
            self._add(np.stack([self._position(info) for info in infos]))
        if self.num_timesteps >= self._next_log:
            self.log_row()
            self._next_log = (self.num_timesteps // self.log_freq + 1) * self.log_freq
        return True

    def _on_training_end(self) -> None:
        # The history always ends at the last step, even between two logging points.
        if self._last_log_step != self.model.num_timesteps:
            self.log_row()

    def state_dict(self) -> dict[str, Any]:
        """The visit histogram, the number of positions counted and the history (plain data).

        What a resumable checkpoint keeps so that a resumed run reports the coverage of all
        its env steps (the positions themselves are not kept).
        """
        return {
            "counts": torch.from_numpy(self._counts.copy()),
            "num_points": int(self._num_points),
            "history": [dict(row) for row in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s counts and history."""
        self._counts[...] = state["counts"].numpy()
        self._num_points = int(state["num_points"])
        self.history = [dict(row) for row in state["history"]]
        if self.history:
            self._last_log_step = int(self.history[-1]["timesteps"])

    @staticmethod
    def _position(info: dict[str, Any]) -> np.ndarray:
        try:
            xy = info["xy"]
        except KeyError:
            raise KeyError(
                'CoverageCallback needs the agent\'s position in info["xy"] at every step, as '
                "flowrl's PointMaze envs report it (flowrl.envs.maze.make_point_maze, "
                f"flowrl/PointMaze-*-v0); this env's info has only {sorted(info)}"
            ) from None
        return np.asarray(xy, dtype=np.float64).reshape(2)

    def _add(self, xy: np.ndarray) -> None:
        """Count positions (n, 2) in the histogram and, with ``keep_points``, keep them."""
        rows, cols = self.layout.cell_of(xy)
        np.add.at(self._counts, (rows, cols), 1)
        if not self.keep_points:
            self._num_points += len(xy)
            return
        end = self._num_points + len(xy)
        if end > len(self._points):
            grown = np.empty((max(2 * len(self._points), self._CHUNK, end), 2), np.float64)
            grown[: self._num_points] = self._points[: self._num_points]
            self._points = grown
        self._points[self._num_points : end] = xy
        self._num_points = end

    # ------------------------------------------------------------------ results

    def log_row(self) -> dict[str, float]:
        """Append the current coverage to :attr:`history` and record it in SB3's logger.

        Returns:
            The row (see the class docstring for its keys).
        """
        stats = self.coverage()
        steps = int(self.num_timesteps)
        row: dict[str, float] = {
            "timesteps": steps,
            "cells": stats["cells"],
            "entropy": stats["entropy"],
            "entropy_normalized": stats["entropy_normalized"],
        }
        self.history.append(row)
        self._last_log_step = steps
        for key in ("cells", "entropy", "entropy_normalized"):
            self.logger.record(f"coverage/{key}", row[key])
        if self.verbose >= 1:
            print(
                f"coverage at {steps} steps: {row['cells']:.0%} of cells, "
                f"entropy {row['entropy']:.3f} nats ({row['entropy_normalized']:.2f} of max)"
            )
        return row

    def coverage(self) -> dict[str, Any]:
        """The coverage of every position so far.

        Returns:
            The dict of :func:`flowrl.envs.maze.maze_coverage` (``cells``, ``entropy``,
            ``entropy_normalized``, ``visits``, ``wall_visits``).
        """
        from flowrl.envs.maze import coverage_from_visits

        return coverage_from_visits(self._counts, self.layout)

    @property
    def num_points(self) -> int:
        """Positions counted so far (env steps of all training envs)."""
        return self._num_points

    def points(self) -> np.ndarray:
        """Every position so far, in the order seen (at one step, env 0 first).

        Returns:
            A (N, 2) float64 copy.

        Raises:
            RuntimeError: If the callback was made with ``keep_points=False``.
        """
        if not self.keep_points:
            raise RuntimeError("positions are not kept: make the callback with keep_points=True")
        return self._points[: self._num_points].copy()

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON: ``{"maze", "num_free_cells", "log_freq", "history"}``.

        ``history`` is the list of rows (see the class docstring).
        """
        data = {
            "maze": self.layout.name,
            "num_free_cells": self.layout.num_free,
            "log_freq": self.log_freq,
            "history": self.history,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
