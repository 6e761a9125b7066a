"""MJX batched environments for PyTorch learners (``pip install "flowrl-policies[mjx]"``).

- :mod:`.core`: the functional task API (``reset(rng) -> MJXState``, ``step(state, a)``).
- :mod:`.locomotion`: ports of gymnasium's Hopper, Walker2d, HalfCheetah, Ant and
  InvertedPendulum ``-v5`` tasks.
- :mod:`.bridge`: :class:`MJXVecEnv`, N states stepped in one jitted call, with auto-reset,
  the SB3 ``VecEnv`` interface and a torch-native one (``env.torch``) through DLPack.
- :mod:`.playground`: any MuJoCo Playground task behind the same bridge
  (``pip install "flowrl-policies[playground]"``).

Example::

    from flowrl.envs.mjx import MJXVecEnv
    env = MJXVecEnv("Hopper", num_envs=1024, seed=0)
    model = ReinFlow("FlowPolicy", env)   # or stable_baselines3.PPO("MlpPolicy", env)
"""

from __future__ import annotations

from flowrl.optional import require

require("jax", "MJX environments")
require("mujoco.mjx", "MJX environments")

from .bridge import MJXVecEnv, TorchMJXEnv, enable_compile_cache  # noqa: E402
from .core import MJXState, MJXTask  # noqa: E402
from .locomotion import Ant, HalfCheetah, Hopper, InvertedPendulum, Walker2d  # noqa: E402

__all__ = [
    "TASKS",
    "MJXState",
    "MJXTask",
    "MJXVecEnv",
    "TorchMJXEnv",
    "enable_compile_cache",
    "make_task",
    "Ant",
    "HalfCheetah",
    "Hopper",
    "InvertedPendulum",
    "Walker2d",
]

TASKS: dict[str, type[MJXTask]] = {
    "Hopper": Hopper,
    "Walker2d": Walker2d,
    "HalfCheetah": HalfCheetah,
    "Ant": Ant,
    "InvertedPendulum": InvertedPendulum,
}


def make_task(name: str, **kwargs) -> MJXTask:
    """An MJX task by name.

    ``name`` is one of :data:`TASKS` (``"Hopper"`` or ``"Hopper-v5"``), or
    ``"playground/<Name>"`` for a MuJoCo Playground task (e.g. ``"playground/CartpoleBalance"``).

    Keyword arguments go to the task's constructor.
    """
    if name.startswith("playground/"):
        from .playground import PlaygroundTask

        return PlaygroundTask(name.split("/", 1)[1], **kwargs)  # type: ignore[return-value]
    key = name.removesuffix("-v5")
    if key not in TASKS:
        raise ValueError(
            f"unknown MJX task {name!r}: choose one of {sorted(TASKS)} or 'playground/<Name>'"
        )
    return TASKS[key](**kwargs)
