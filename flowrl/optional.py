"""Lazy imports of optional backends, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "require"]

# Module → the pip extra of flowrl that provides it.
EXTRAS: dict[str, str] = {
    "jax": "mjx",
    "mujoco.mjx": "mjx",
    "mujoco_playground": "playground",
    "triton": "kernels",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import an optional backend or explain how to install it.

    Args:
        module: Module name, e.g. ``"jax"`` or ``"triton"``.
        purpose: What needs it, for the error message (e.g. ``"MJX environments"``).

    Returns:
        The imported module.

    Raises:
        ImportError: Naming the ``flowrl-policies[extra]`` to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module)
        hint = f'pip install "flowrl-policies[{extra}]"' if extra else f"pip install {module}"
        need = f" for {purpose}" if purpose else ""
        raise ImportError(f"{module} is needed{need} but is not installed: {hint}") from err
