"""Experiment A, small: one seed of the toy at a fast scale, asserting the paper's three claims and
the weak-to-strong case (``taro_ext.evaluation.experiment_a``).

The margins are the issue's goals where they apply (10 points of accuracy over the base, 2% of the
base's out-of-domain NLL, 2x alpha on digits and operators over letters); where a comparison
between two methods is one of accuracy on 60 problems, 0.05 (3 problems) is allowed for ties.
Each can fail: a reward model without the arithmetic, a router that does not switch off on the
stories, or one that does not lean on the reward model for results, breaks one of them.
"""
import os

import pytest

from taro_ext.evaluation.experiment_a import ExperimentAConfig, claims, run_seed

# Not yet run to the end on this machine (its CPU went to the SmolLM2 recipe in the session that
# wrote it, and it is estimated at 4-5 minutes on an idle core): opt in until it has been measured
# and sized for CI.
pytestmark = pytest.mark.skipif(os.environ.get("TARO_TEST_EXPERIMENT_A") != "1",
                                reason="set TARO_TEST_EXPERIMENT_A=1 (unmeasured, minutes on CPU)")

SMALL = ExperimentAConfig(seed=0, n_train=1500, n_router=400, n_test=60, base_steps=200, large_steps=200,
                          reward_sft_steps=400, arm_steps=30, router_steps=150)
TIE = 0.05  # 3 of 60 problems


@pytest.fixture(scope="module")
def run():
    return run_seed(SMALL)


def test_in_domain_taro_beats_base_and_matches_best_fixed_alpha(run):
    c = claims(run["small"])["in_domain"]
    assert c["taro_acc"] >= c["base_acc"] + 0.10, c
    assert c["taro_acc"] >= c["best_fixed_acc"] - TIE, c
    assert c["taro_nll"] < c["best_fixed_nll"], c
    assert c["taro_nll"] < c["base_nll"], c


def test_out_of_domain_taro_keeps_the_base_where_the_best_fixed_alpha_hurts(run):
    c = claims(run["small"])["out_of_domain"]
    assert c["taro_acc"] >= c["base_acc"] - TIE, c
    assert c["taro_nll"] <= 1.02 * c["base_nll"], c
    assert c["best_fixed_nll"] > 1.02 * c["base_nll"], c


def test_router_alpha_on_digits_and_operators_is_twice_that_on_letters(run):
    p = claims(run["small"])["alpha_partition"]
    assert p["digit_operator"] >= 2 * p["letter"], p


def test_weak_to_strong_router_and_reward_model_improve_the_larger_base(run):
    c = claims(run["large"])
    assert c["in_domain"]["taro_acc"] >= c["in_domain"]["base_acc"] + 0.10, c
    assert c["out_of_domain"]["taro_acc"] >= c["out_of_domain"]["base_acc"] - TIE, c
