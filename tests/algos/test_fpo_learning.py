"""FPO learns: fine-tuning a deliberately weak BC flow policy improves its return.

The same start as ReinFlow's and PolicyFlow's learning tests (``pendulum_bc.py``: −1073
deterministic, −1089 stochastic on the fixed evaluation env). 60k env steps of FPO with the
paper's defaults (N_mc = 8, clip 0.05; a⁰ ~ N(0, I)), 65 s on one core, measured with::

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -s tests/algos/test_fpo_learning.py

seed 0: −1073 → −248 deterministic (+824), −1089 → −276 stochastic (+813); seeds 1 and 2
(same start): +768 / +827 and +809 / +787. The test asks for +400 and +400.

FPO++ (``variant="fpo++"``) with the same settings improves less in this budget: +392 / +370,
+209 / +251, +463 / +497 (seeds 0, 1, 2): its per-pair clip and SPO penalty keep each update
smaller (clip fraction ~0.1 vs ~0.8). The slow test pins it with a margin of +100.
"""

import pytest
from pendulum_bc import improvement, pendulum_venv, weak_bc_actor

from flowrl.algos import FPO
from flowrl.policies import FPOPolicy


def _fpo(variant: str) -> FPO:
    venv = pendulum_venv()
    policy = FPOPolicy.from_pretrained(
        weak_bc_actor(), venv.observation_space, venv.action_space, value_hidden=(64, 64)
    )
    return FPO(
        policy,
        venv,
        variant=variant,
        n_steps=256,
        batch_size=256,
        n_epochs=10,
        gamma=0.95,
        seed=0,
    )


# FPO++'s per-pair clip and SPO penalty keep its steps small: in this budget it gains less
# (docs/fpo_dppo.md), so it asserts less and runs with the slow tests.
@pytest.mark.parametrize(
    ("variant", "min_gain"),
    [("fpo", 400), pytest.param("fpo++", 100, marks=pytest.mark.slow)],
)
def test_fpo_improves_a_weak_bc_policy_on_pendulum(variant, min_gain):
    model = _fpo(variant)
    change = improvement(model, 60_000)
    assert change[True] > min_gain
    assert change[False] > min_gain
    assert model.logger.name_to_value["flow/ratio_first_minibatch_max_deviation"] == 0.0
