"""DPPO learns: fine-tuning a deliberately weak BC diffusion policy improves its return.

The start is built as ReinFlow's learning test builds its flow (``pendulum_bc``): the same
noisy swing-up data (mean return about −600) and only 300 BC steps, here with the
ε-prediction loss of a :class:`~flowrl.policies.DiffusionActor` (K = 4 DDPM steps).

Measured (``OMP_NUM_THREADS=1 .venv/bin/python -m pytest -s
tests/algos/test_dppo_learning.py``: 30k env steps, the 15-episode evaluations below; 72 s
of CPU on one core, about 40 % of it the four evaluations), DPPO seed 0 (this test):
deterministic −1314 → −359, stochastic −1296 → −233. Seeds 1/2/3 with the same BC start:
deterministic → −278 / −266 / −263, stochastic −1311 / −1319 / −1284 → −275 / −359 / −301,
so the gains lie between +955 and +1063 over 4 seeds. The test asks for +400 in both modes.
"""

from pendulum_bc import improvement, pendulum_venv, weak_bc_actor

from flowrl.algos import DPPO
from flowrl.policies import DiffusionActor, DiffusionPolicy

# Evaluations of 15 episodes, half of pendulum_bc's 30: a K-step diffusion chain per action
# makes evaluation the larger half of this test.
EPISODES = 15


def test_dppo_improves_a_weak_bc_diffusion_policy_on_pendulum():
    venv = pendulum_venv()
    actor = weak_bc_actor(DiffusionActor)
    policy = DiffusionPolicy.from_pretrained(
        actor, venv.observation_space, venv.action_space, value_hidden=(64, 64)
    )
    model = DPPO(policy, venv, n_steps=256, batch_size=256, n_epochs=10, gamma=0.95, seed=0)
    change = improvement(model, 30_000, EPISODES)
    assert change[True] > 400
    assert change[False] > 400
    assert model.logger.name_to_value["flow/ratio_first_minibatch_max_deviation"] == 0.0
