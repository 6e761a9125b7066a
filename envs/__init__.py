"""flowrl.envs: environments for flowrl (installed from the repository's ``envs/`` folder).

Importing this package registers flowrl's gymnasium environments. Batched MJX environments
live in submodules that import jax on first use (``pip install "flowrl[mjx]"``).
"""

__all__: list[str] = []
