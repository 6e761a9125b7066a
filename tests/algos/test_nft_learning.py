"""NFT learns: DiffusionNFT's forward-process loss improves a weak BC flow policy.

The same start as the other learners' tests (``pendulum_bc.py``: −1073 deterministic, −1089
stochastic on the fixed evaluation env) and FPO's settings (its policy, a⁰ ~ N(0, I), 8
(τ, ε) pairs, 256 × 1 env rollouts, 10 epochs, γ 0.95), with NFT's β = 1 and c = 1. Measured
on one core with::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -s -m "slow or not slow" \
        tests/algos/test_nft_learning.py

seed 0: −1073 → −393 deterministic (+680), −1089 → −660 stochastic (+429); seed 1: +733 /
+838; seed 2: +227 / +246 (ReinFlow's test, same start and budget: +883 / +870, +887 / +926,
… — docs/nft.md). Seed 0 runs by default, seeds 1 and 2 with the slow tests; each asserts
+200 both ways (seed 2's gain is the smallest measured).
"""

import pytest
from pendulum_bc import improvement, pendulum_venv, weak_bc_actor

from flowrl.algos import NFT
from flowrl.policies import FPOPolicy


def nft_model(seed: int) -> NFT:
    venv = pendulum_venv()
    policy = FPOPolicy.from_pretrained(
        weak_bc_actor(), venv.observation_space, venv.action_space, value_hidden=(64, 64)
    )
    return NFT(policy, venv, n_steps=256, batch_size=256, n_epochs=10, gamma=0.95, seed=seed)


@pytest.mark.parametrize(
    "seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_nft_improves_a_weak_bc_policy_on_pendulum(seed):
    model = nft_model(seed)
    change = improvement(model, 60_000)
    assert change[True] > 200
    assert change[False] > 200
    assert model.logger.name_to_value["flow/ratio_first_minibatch_max_deviation"] == 0.0
