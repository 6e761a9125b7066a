"""flowrl: reinforcement learning with flow-matching and diffusion policies.

Layers (imports point downward only): ``algos`` → ``policies`` → ``nets`` → ``flow``, with
``data`` beside them; ``flowrl.envs`` and ``flowrl.kernels`` are installed from the
repository's top-level ``envs/`` and ``kernels/`` folders. ``import flowrl`` loads only torch,
numpy and the standard library: optional backends (jax, mujoco-mjx, triton, playground) are
imported on first use through :func:`flowrl.optional.require`.

The public classes are importable from the top, as in SB3 (``from flowrl import ReinFlow``);
each loads its module (and Stable-Baselines3) on first access.
"""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "flowrl-policies"  # the name on the package index; the import name is flowrl

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"

# Public name -> module that defines it (loaded on first access: ``import flowrl`` stays light).
_EXPORTS = {
    "ReinFlow": "flowrl.algos",
    "PolicyFlow": "flowrl.algos",
    "FPO": "flowrl.algos",
    "DPPO": "flowrl.algos",
    "NFT": "flowrl.algos",
    "FlowSAC": "flowrl.algos",
    "DSRL": "flowrl.algos",
    "EDP": "flowrl.algos",
    "EDPExplore": "flowrl.algos",
    "ExplorationSAC": "flowrl.algos",
    "EDPPolicy": "flowrl.policies",
    "DiffusionPolicy": "flowrl.policies",
    "DiffusionActor": "flowrl.policies",
    "OnPolicyCore": "flowrl.algos",
    "FlowBC": "flowrl.algos",
    "BCConfig": "flowrl.algos",
    "FlowPolicy": "flowrl.policies",
    "FlowSACPolicy": "flowrl.policies",
    "PolicyFlowPolicy": "flowrl.policies",
    "FPOPolicy": "flowrl.policies",
    "FlowActor": "flowrl.policies",
    "FlowActorConfig": "flowrl.policies",
    "OfflineDataset": "flowrl.data",
    "load_dataset": "flowrl.data",
    "LearningCurveCallback": "flowrl.callbacks",
    "TrainingCheckpoint": "flowrl.checkpoints",
    "reinflow_mujoco": "flowrl.recipes",
    "reinflow_paper": "flowrl.recipes",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowrl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
