"""flowrl.recipes: the Python presets equal their Hydra yaml and build working learners."""

from pathlib import Path

import pytest
from learner_helpers import update
from omegaconf import OmegaConf

import flowrl
from flowrl import recipes
from flowrl.algos import ReinFlow
from flowrl.experiments import train

ROOT = Path(__file__).resolve().parents[2]
SMALL_POLICY = dict(actor_config=dict(width=16, depth=1), noise_hidden=(8,), value_hidden=(8,))
SMALL_ALGO = dict(n_steps=32, batch_size=16, n_epochs=1, seed=0)


def _yaml(name):
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "recipe" / f"{name}.yaml"))


def _as_yaml(values):
    """Tuples as the lists a yaml holds."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@pytest.mark.parametrize(
    ("name", "preset", "n_envs"),
    [
        ("reinflow_mujoco", recipes.reinflow_mujoco, recipes.REINFLOW_MUJOCO_N_ENVS),
        ("reinflow_paper", recipes.reinflow_paper, recipes.REINFLOW_PAPER_N_ENVS),
    ],
)
def test_python_preset_equals_its_yaml(name, preset, n_envs):
    kwargs = preset()
    policy = kwargs.pop("policy_kwargs")
    yaml = _yaml(name)
    assert _as_yaml(policy) == yaml["policy"]
    assert kwargs == yaml["algo"]
    assert yaml["n_envs"] == n_envs
    if name == "reinflow_paper":
        assert yaml["env"]["action_chunk"] == recipes.REINFLOW_PAPER_ACTION_CHUNK


@pytest.mark.parametrize(
    ("name", "preset"),
    [("reinflow_mujoco", recipes.reinflow_mujoco), ("reinflow_paper", recipes.reinflow_paper)],
)
def test_hydra_recipe_reaches_the_same_constructor_arguments(name, preset):
    cfg = train.compose_config("algo=reinflow", "env=hopper", f"+recipe={name}")
    kwargs = preset()
    policy = kwargs.pop("policy_kwargs")
    params = cfg.algo.hyperparameters()
    assert {k: params[k] for k in kwargs} == kwargs
    built = cfg.policy.policy_kwargs()
    assert {k: built[k] for k in policy} == policy


def test_mujoco_preset_overrides_and_builds():
    kwargs = recipes.reinflow_mujoco(
        gamma=0.995, pretrained="bc.pt", policy_kwargs={"sigma_max": 0.2}, n_epochs=3
    )
    assert (kwargs["gamma"], kwargs["gae_lambda"], kwargs["n_epochs"]) == (0.995, 0.99, 3)
    assert kwargs["policy_kwargs"] == {"sigma_min": 0.05, "sigma_max": 0.2, "pretrained": "bc.pt"}
    assert recipes.reinflow_mujoco()["policy_kwargs"]["sigma_max"] == 0.12  # no shared state
    model = ReinFlow(
        "FlowPolicy",
        "Pendulum-v1",
        **recipes.reinflow_mujoco(policy_kwargs=dict(num_steps=2, **SMALL_POLICY), **SMALL_ALGO),
    )
    assert (model.policy.sigma_min, float(model.policy.sigma_max)) == (0.05, pytest.approx(0.12))
    assert (model.target_kl, model.critic_warmup_updates, model.gamma) == (0.01, 5, 0.999)
    assert model.learning_rate == 1e-4


def test_paper_preset_builds_a_learner_with_the_paper_reduction():
    model = ReinFlow(
        "FlowPolicy",
        "Pendulum-v1",
        **recipes.reinflow_paper(policy_kwargs=SMALL_POLICY, **SMALL_ALGO),
    )
    assert model.log_prob_reduction == "paper" and model.policy.num_steps == 4
    assert model.policy.initial_std == 1.0 and model._reduction_scale() == 5  # (K+1)·Da
    assert (model.sigma_max_final, model.sigma_hold_fraction) == (0.198, 0.35)
    assert model.target_kl * 1.5 == pytest.approx(1.0)  # the paper stops at KL > 1
    values = update(model)
    assert values["flow/ratio_first_minibatch_max_deviation"] == 0.0


def test_presets_are_exported_lazily():
    assert flowrl.reinflow_mujoco is recipes.reinflow_mujoco
    assert flowrl.reinflow_paper is recipes.reinflow_paper
