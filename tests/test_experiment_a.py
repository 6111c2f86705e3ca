"""Experiment A, small: one seed of the toy at a fast scale, asserting the claims that held on every
seed measured at this scale (``taro_ext.evaluation.experiment_a``, bench/results/experiment_a_small.md).

Cost: about 70 CPU seconds on one core (seeds 0, 1, 2 with 1 thread: 193 s for the three).

The figures come from two machines: the tiny models are trained from scratch, and the same seed gives
different models on different CPUs (floating-point summation order in the BLAS kernels), so each
machine's seeds are separate draws. "AMD" is the 2-core AMD EPYC of bench/results/experiment_a_small.md
(2026-12-08, the router started at alpha_max / 20); "Intel" the 2-core Xeon of an earlier run (the router
started at alpha_max / 2; that machine is gone). Figures: small base, seeds 0 / 1 / 2. Each assertion can
fail: a reward model without the arithmetic, a router that does not switch off on the stories, or one that
does not lean on the reward model for results (or fell to alpha 0 everywhere), breaks one.

Left out, because they did not hold on every seed of both machines at this scale (at full scale,
bench/results/experiment_a.md, TARo beats the base by 21-34 points and stays within the best fixed
alpha's paired interval on every seed):
- TARo >= base + 10 points in domain: AMD +6.7 / +1.7 / +18.3, Intel +3.3 / +13.3 / +13.3 points.
- TARo's in-domain accuracy within 5 points of the best fixed alpha's: only at the edge, 5 points being 3
  of 60 problems (AMD -5.0 / -1.7 / +1.7, seed 0: 0.183 against genarm:0.25's 0.233; Intel -3.3 / 0.0 /
  -5.0; the earlier AMD run with the old start -6.7 on seed 0).
- TARo's in-domain NLL below the best fixed alpha's: AMD 0.2009 vs 0.2140 / 0.2231 vs 0.2340 /
  0.2002 vs 0.2085, Intel 0.2599 vs 0.2118 / 0.2645 vs 0.2655 / 0.2156 vs 0.2113.
- TARo's story NLL within 2% of the base's (the issue's bound for AlpacaEval): AMD 0.971 / 0.971 /
  0.986, Intel 1.002 / 0.985 / 0.985 (an earlier AMD run with the old start: 1.023 on seed 0).
  Asserted here: within 5%, and below the in-domain-best fixed alpha's.
- The in-domain-best fixed alpha's story NLL above 1.5x the base's: AMD 1.10x (seed 0, where the best
  fixed alpha was 0.25) / 52x / 7.7x, Intel 67x / 6.4x / 1.84x.
- Weak-to-strong, larger base + TARo >= larger base + 10 points: AMD 0.0 / -3.3 / +15.0, Intel
  +5.0 / +0.0 / +15.0 points.
"""
import pytest

from taro_ext.evaluation.experiment_a import ExperimentAConfig, claims, run_seed

SMALL = ExperimentAConfig(seed=0, n_train=1500, n_router=400, n_test=60, base_steps=200, large_steps=200,
                          reward_sft_steps=400, arm_steps=30, router_steps=150)
TIE = 0.05  # 3 of 60 problems


@pytest.fixture(scope="module")
def run():
    return run_seed(SMALL)


def test_in_domain_taro_lowers_the_base_nll(run):
    c = claims(run["small"])["in_domain"]
    # TARo / base NLL: AMD 0.537 / 0.567 / 0.523, Intel 0.695 / 0.672 / 0.563.
    assert c["taro_nll"] <= 0.8 * c["base_nll"], c
    # TARo - base accuracy: AMD +6.7 / +1.7 / +18.3, Intel +3.3 / +13.3 / +13.3 points.
    assert c["taro_acc"] > c["base_acc"], c


def test_out_of_domain_taro_keeps_the_base_where_the_best_fixed_alpha_hurts(run):
    c = claims(run["small"])["out_of_domain"]
    # TARo's story accuracy equalled the base's on every seed of both machines.
    assert c["taro_acc"] >= c["base_acc"] - TIE - 1e-9, c
    # TARo / base story NLL: AMD 0.971 / 0.971 / 0.986, Intel 1.002 / 0.985 / 0.985.
    assert c["taro_nll"] <= 1.05 * c["base_nll"], c
    # The in-domain-best fixed alpha's story NLL over TARo's: AMD 1.14x / 53x / 7.8x, Intel at least 1.8x.
    assert c["best_fixed_nll"] > c["taro_nll"], c


def test_router_alpha_on_digits_and_operators_is_twice_that_on_letters(run):
    p = claims(run["small"])["alpha_partition"]
    # Mean alpha on digits and operators AMD 1.42 / 1.47 / 1.38, Intel 0.72 / 1.16 / 1.39 (a router
    # switched off everywhere, as the ARM stage without the chosen step's NLL produced, gives ~0 and a
    # meaningless ratio); ratio to letters AMD 3.0x / 3.8x / 5.4x, Intel 2762x / 8.3x / 7.0x.
    assert p["digit_operator"] >= 0.3, p
    assert p["digit_operator"] >= 2 * p["letter"], p


def test_weak_to_strong_router_and_reward_model_lower_the_larger_base_nll_and_keep_ood(run):
    c = claims(run["large"])
    # Larger base, TARo / base NLL in domain: AMD 0.655 / 0.659 / 0.647, Intel 0.785 / 0.762 / 0.634;
    # out of domain AMD 1.005 / 1.014 / 1.005, Intel 1.001 / 1.001 / 1.000. Story accuracy, TARo - base:
    # AMD 0.0 / 0.0 / -5.0 points, Intel equal on every seed.
    assert c["in_domain"]["taro_nll"] <= 0.85 * c["in_domain"]["base_nll"], c
    assert c["out_of_domain"]["taro_nll"] <= 1.02 * c["out_of_domain"]["base_nll"], c
    assert c["out_of_domain"]["taro_acc"] >= c["out_of_domain"]["base_acc"] - TIE - 1e-9, c
