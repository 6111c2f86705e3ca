"""Experiment A, small: TARo's learned alpha beats every fixed alpha on held-out problems.

The metric is per-token NLL of the correct held-out solutions under each method's decoding
distribution, not greedy accuracy: at this size (tiny models trained for a few hundred steps,
60 held-out problems) accuracy moves in steps of 1/60 and is dominated by noise, while the NLL
averages over thousands of tokens. The test can fail: if the router did not learn to weight
the reward model per token type (high on digits, low on letters), its single-alpha fallback
is no better than the best grid alpha, and the margin assertion fails.
"""
import pytest

from taro_ext.evaluation.experiment_a import ExperimentAConfig, run_seed

# The models of `make experiment-a` (seed 0), evaluated on fewer problems and without decoding.
SMALL = ExperimentAConfig(seed=0, n_test=60, n_decode=0)


@pytest.fixture(scope="module")
def small_run():
    return run_seed(SMALL)


def test_taro_beats_best_fixed_alpha_in_distribution(small_run):
    nll = small_run["in_distribution"]["nll"]
    best_fixed = min(v for k, v in nll.items() if k != "taro")
    assert nll["taro"] < best_fixed - 0.005, nll


def test_router_leans_on_the_reward_model_for_digits(small_run):
    alpha = small_run["in_distribution"]["alpha"]
    assert alpha["digit"]["mean"] > alpha["letter"]["mean"] + 0.05, alpha
