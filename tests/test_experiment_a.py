"""Experiment A, small: one seed of the toy at a fast scale, asserting the claims that held on every
seed measured at this scale (``taro_ext.evaluation.experiment_a``, bench/results/experiment_a.md).

Cost: about 105 CPU seconds on one core (measured over seeds 0, 1, 2 with 1 thread: base 17, larger
base 31, reward SFT 29, ARM 4, router 5, evaluation 16; the wall time on the shared 2-core machine
was 28 minutes, load 8-9).

Margins come from the three seeds (figures: small base, seeds 0 / 1 / 2). Each can fail: a reward
model without the arithmetic, a router that does not switch off on the stories, or one that does not
lean on the reward model for results, breaks one of them.

Left out, because they did not hold on every seed at this scale (not weakened; a larger scale is
what it would take, and it did not fit the time left):
- TARo >= base + 10 points in domain: +3.3 / +13.3 / +13.3 points (0.150 vs 0.117, 0.283 vs 0.150,
  0.233 vs 0.100).
- TARo's in-domain NLL below the best fixed alpha's: 0.2599 vs 0.2118 / 0.2645 vs 0.2655 /
  0.2156 vs 0.2113.
- Weak-to-strong, larger base + TARo >= larger base + 10 points: +5.0 / +0.0 / +15.0 points.
"""
import pytest

from taro_ext.evaluation.experiment_a import ExperimentAConfig, claims, run_seed

SMALL = ExperimentAConfig(seed=0, n_train=1500, n_router=400, n_test=60, base_steps=200, large_steps=200,
                          reward_sft_steps=400, arm_steps=30, router_steps=150)
TIE = 0.05  # 3 of 60 problems


@pytest.fixture(scope="module")
def run():
    return run_seed(SMALL)


def test_in_domain_taro_lowers_the_base_nll_and_matches_the_best_fixed_alpha(run):
    c = claims(run["small"])["in_domain"]
    # TARo / base NLL: 0.695 / 0.672 / 0.563.
    assert c["taro_nll"] <= 0.8 * c["base_nll"], c
    # TARo - best fixed alpha, accuracy: -0.033 / 0.000 / -0.050.
    assert c["taro_acc"] >= c["best_fixed_acc"] - TIE - 1e-9, c


def test_out_of_domain_taro_keeps_the_base_where_the_best_fixed_alpha_hurts(run):
    c = claims(run["small"])["out_of_domain"]
    # TARo's story accuracy equalled the base's on every seed; NLL ratio 1.002 / 0.985 / 0.985.
    assert c["taro_acc"] >= c["base_acc"] - TIE, c
    assert c["taro_nll"] <= 1.02 * c["base_nll"], c
    # The in-domain-best fixed alpha's story NLL: 67x / 6.4x / 1.84x the base's.
    assert c["best_fixed_nll"] > 1.5 * c["base_nll"], c


def test_router_alpha_on_digits_and_operators_is_twice_that_on_letters(run):
    p = claims(run["small"])["alpha_partition"]
    # Mean alpha on digits and operators 0.72 / 1.16 / 1.39 (a router switched off everywhere, as
    # the ARM stage without the chosen step's NLL produced, gives ~0 and a meaningless ratio);
    # ratio to letters 2762x / 8.3x / 7.0x.
    assert p["digit_operator"] >= 0.3, p
    assert p["digit_operator"] >= 2 * p["letter"], p


def test_weak_to_strong_router_and_reward_model_lower_the_larger_base_nll_and_keep_ood(run):
    c = claims(run["large"])
    # Larger base, TARo / base NLL in domain: 0.785 / 0.762 / 0.634; out of domain 1.001 / 1.001 / 1.000,
    # story accuracy equal to the larger base's on every seed.
    assert c["in_domain"]["taro_nll"] <= 0.85 * c["in_domain"]["base_nll"], c
    assert c["out_of_domain"]["taro_nll"] <= 1.02 * c["out_of_domain"]["base_nll"], c
    assert c["out_of_domain"]["taro_acc"] >= c["out_of_domain"]["base_acc"] - TIE, c
