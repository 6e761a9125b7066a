"""ReinFlow runs whose trained weights are pinned in ``data/reinflow_reference.pt``.

The file was written by ReinFlow as it stood before the on-policy core (commit 77b6b08,
torch 2.13.0 CPU, one thread). The test
``test_on_policy_core.py::test_reinflow_on_the_core_is_bit_identical`` reruns the same
configurations and requires every tensor to be equal, so any change in what ReinFlow
computes, or in the order it draws random numbers, shows.

``plain_K2`` and ``kl_stop_K4`` are still that pre-core code's output. ``options_K1`` was
rewritten, on the core, by the W2 fix: ``FlowPolicyBase.bc_regularizer`` used to integrate
both flows from a⁰ ~ N(0, I) while rollouts and evaluation start at a⁰ = c·N(0, I) with
c = ``initial_std`` (0 here), so the W2 term never constrained the deployed path; it now
draws a⁰ as rollouts do (the same random draw, scaled by c). ``options_K1`` is the only
configuration with a W2 term (``bc_coef=0.1``); before the rewrite it was checked to pass
without the fix and fail with it, so the W2 term is the only change in it. Its stored keys
are the pre-core ones (the core logs a few more scalars, which are not pinned).

To rewrite configurations after an intended change, name them:
``python tests/algos/reinflow_reference.py options_K1`` replaces those entries (same keys
as before) and keeps every other configuration's tensors as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowrl.algos import ReinFlow

PATH = Path(__file__).parent / "data" / "reinflow_reference.pt"

# Each configuration exercises a different path through the update.
CONFIGS: dict[str, dict[str, Any]] = {
    "plain_K2": dict(num_steps=2, algo={}),
    "options_K1": dict(
        num_steps=1,
        algo=dict(
            target_kl=1e-4,
            critic_full_epochs=True,
            critic_warmup_updates=1,
            clip_range_vf=0.2,
            bc_coef=0.1,
            ent_coef=0.01,
            sigma_max_final=0.12,
            sigma_hold_fraction=0.3,
            log_prob_reduction="mean",
            log_ratio_clip=2.0,
        ),
    ),
    "kl_stop_K4": dict(
        num_steps=4,
        initial_std=1.0,
        n_envs=2,
        algo=dict(target_kl=1e-4, normalize_advantage=False, n_epochs=3),
    ),
}


def run(name: str) -> dict[str, torch.Tensor]:
    """Train configuration ``name`` for four updates; its weights and last logged scalars."""
    config = CONFIGS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from stable_baselines3.common.env_util import make_vec_env

        env = make_vec_env("Pendulum-v1", n_envs=config.get("n_envs", 1), seed=3)
        algo = dict(n_steps=32, batch_size=16, n_epochs=2, seed=3)
        algo.update(config["algo"])
        model = ReinFlow(
            "FlowPolicy",
            env,
            policy_kwargs=dict(
                num_steps=config["num_steps"],
                initial_std=config.get("initial_std", 0.0),
                actor_config=dict(width=32, depth=1),
                noise_hidden=(16,),
                value_hidden=(32,),
            ),
            **algo,
        )
        model.learn(4 * 32 * env.num_envs)
        out = {f"state.{k}": v.detach().clone() for k, v in model.policy.state_dict().items()}
        for key, value in model.logger.name_to_value.items():
            out[f"log.{key}"] = torch.tensor(float(value), dtype=torch.float64)
        return out
    finally:
        torch.set_num_threads(threads)


def rewrite(names: list[str]) -> None:
    """Rerun configurations ``names`` and replace their entries in :data:`PATH`.

    The other configurations are kept as stored; a configuration already in the file keeps
    its key set (scalars logged only by newer code are not added).
    """
    unknown = [name for name in names if name not in CONFIGS]
    if not names or unknown:
        raise SystemExit(
            "usage: python tests/algos/reinflow_reference.py NAME [NAME ...], each NAME one of "
            f"{sorted(CONFIGS)} (got {names})"
        )
    stored = torch.load(PATH, weights_only=True) if PATH.exists() else {}
    for name in names:
        fresh = run(name)
        keys = list(stored[name]) if name in stored else list(fresh)
        stored[name] = {key: fresh[key] for key in keys}
    PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stored, PATH)
    print(f"rewrote {names} in {PATH}")


if __name__ == "__main__":
    import sys

    rewrite(sys.argv[1:])
