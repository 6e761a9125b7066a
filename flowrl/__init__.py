"""flowrl: reinforcement learning with flow-matching and diffusion policies.

Layers (imports point downward only): ``algos`` → ``policies`` → ``nets`` → ``flow``, with
``data`` beside them; ``flowrl.envs`` and ``flowrl.kernels`` are installed from the
repository's top-level ``envs/`` and ``kernels/`` folders. ``import flowrl`` loads only torch,
numpy and the standard library: optional backends (jax, mujoco-mjx, triton, playground) are
imported on first use through :func:`flowrl.optional.require`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowrl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
