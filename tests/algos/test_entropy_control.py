"""Clip-Cov and KL-Cov (arXiv 2505.22617) on hand-made minibatches, and in the learners."""

import importlib

import numpy as np
import pytest
import torch

from flowrl.algos import PolicyFlow, ReinFlow
from flowrl.algos.entropy_control import (
    clip_cov_keep,
    covariance_terms,
    kl_cov_selection,
    selection_size,
    surrogate_loss,
)

importlib.import_module("flowrl.envs")  # registers MultiGoal-v0

# A hand-made minibatch of 8: log-probs and advantages with means 0 and 0.5.
LOG_PROB = torch.tensor([2.0, -1.0, 0.0, 1.0, -2.0, 3.0, -3.0, 0.0], dtype=torch.float64)
ADV = torch.tensor([1.5, 0.5, -1.0, 2.5, 0.5, 0.0, -1.0, 1.0])
# c_i = (log p_i − 0)(A_i − 0.5), written out:
COV = torch.tensor([2.0, 0.0, 0.0, 2.0, 0.0, -1.5, 4.5, 0.0], dtype=torch.float64)


def test_covariance_terms_by_hand():
    torch.testing.assert_close(covariance_terms(LOG_PROB, ADV), COV)


def test_selection_size_is_at_least_one():
    assert selection_size(2e-3, 8) == 1
    assert selection_size(0.25, 8) == 2
    assert selection_size(0.3, 10) == 3


def test_kl_cov_selects_exactly_the_largest_covariances():
    assert kl_cov_selection(COV, 0.125).nonzero().flatten().tolist() == [6]  # 4.5
    # The two largest: 4.5, then one of the two 2.0 (ties: either is a largest).
    top2 = set(kl_cov_selection(COV, 0.25).nonzero().flatten().tolist())
    assert 6 in top2 and top2 - {6} <= {0, 3} and len(top2) == 2
    assert set(kl_cov_selection(COV, 0.375).nonzero().flatten().tolist()) == {0, 3, 6}


def test_clip_cov_removes_random_samples_inside_the_window_and_not_clipped():
    clipped = torch.zeros(8, dtype=torch.bool)
    clipped[3] = True  # sample 3 carries no gradient already
    # Window (1, 5): candidates 0 (2.0) and 6 (4.5); 3 is clipped, 5 is negative.
    seen = set()
    for seed in range(20):
        keep = clip_cov_keep(COV, 0.125, (1.0, 5.0), clipped, torch.Generator().manual_seed(seed))
        removed = (keep == 0).nonzero().flatten().tolist()
        assert len(removed) == 1 and removed[0] in {0, 6}
        seen.add(removed[0])
    assert seen == {0, 6}  # the choice among candidates is random
    keep = clip_cov_keep(COV, 0.5, (1.0, 5.0), clipped)  # asks for 4, only 2 qualify
    assert (keep == 0).nonzero().flatten().tolist() == [0, 6]
    keep = clip_cov_keep(COV, 0.5, (5.0, 9.0), clipped)  # none qualifies
    assert torch.equal(keep, torch.ones(8, dtype=torch.float64))


def test_surrogate_without_control_is_ppo_clip():
    ratio = torch.tensor([0.5, 1.0, 1.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -2.0])
    loss, share = surrogate_loss(adv, ratio, ratio.log(), 0.2)
    # per sample −min(A r, A clip(r)): −0.5, 1.0, −1.2, 2.2 → mean 0.375.
    assert float(loss) == pytest.approx(0.375) and share == 0.0


def test_kl_cov_surrogate_by_hand():
    ratio = torch.exp(torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64))
    adv = torch.tensor([1.0, 2.0, -1.0, 0.5])
    cov = torch.tensor([0.1, 3.0, 0.2, -1.0], dtype=torch.float64)  # sample 1 is the largest
    loss, share = surrogate_loss(
        adv, ratio, ratio.log(), 0.2, control="kl_cov", cov=cov, fraction=0.25, kl_cov_coef=2.0
    )
    # −A·r for all (no PPO clip), plus β·|log r| = 2·0.2 on sample 1.
    expected = (-adv * ratio).mean() + 2.0 * 0.2 / 4
    assert float(loss) == pytest.approx(float(expected)) and share == 0.25


def test_clip_cov_surrogate_takes_the_removed_sample_out_of_the_gradient():
    log_ratio = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    loss, share = surrogate_loss(
        ADV, log_ratio.exp(), log_ratio, 0.2, control="clip_cov", cov=COV, fraction=0.125
    )
    loss.backward()
    removed = (log_ratio.grad == 0) & (ADV != 0)
    assert removed.sum() == 1 and share == 0.125
    # The candidates: c_i in (1, 5) and not clipped — 0 and 3 (2.0) and 6 (4.5); the one
    # removed is a random choice among them (the global RNG: any of the three).
    assert int(removed.nonzero()) in {0, 3, 6}


@pytest.mark.parametrize("learner", [ReinFlow, PolicyFlow])
@pytest.mark.parametrize("control", ["clip_cov", "kl_cov"])
def test_every_on_policy_learner_takes_entropy_control(learner, control):
    policy_kwargs = dict(actor_config=dict(width=16, depth=1), num_steps=2, value_hidden=(16,))
    model = learner(
        learner.policy_aliases and next(iter(learner.policy_aliases)),
        "MultiGoal-v0",
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        entropy_control=control,
        cov_fraction=0.1,
        clip_cov_bounds=(-10.0, 10.0),
        policy_kwargs=policy_kwargs,
        seed=0,
    )
    model.learn(128)
    logged = model.logger.name_to_value
    assert logged["train/entropy_control_fraction"] == pytest.approx(3 / 32)  # ⌊0.1·32⌋
    for key in ("train/log_prob_adv_cov_mean", "train/log_prob_adv_cov_max"):
        assert np.isfinite(logged[key])
    assert np.isfinite(logged["train/neg_log_prob_mean"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(entropy_control="cov"), "entropy_control"),
        (dict(cov_fraction=0.0), "cov_fraction"),
        (dict(cov_fraction=1.5), "cov_fraction"),
        (dict(clip_cov_bounds=(5.0, 1.0)), "clip_cov_bounds"),
    ],
)
def test_bad_entropy_control_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReinFlow("FlowPolicy", "Pendulum-v1", **kwargs)
