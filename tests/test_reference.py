"""The PyTorch reference against an independent numpy/plain-Python computation of the spec,
and the spec's identities (alpha_override=0 is the base model, GenARM's distribution)."""
import math

import numpy as np
import pytest
import torch

import taro_ext
from taro_ext import reference

NEG_INF = float("-inf")


# --- an independent implementation, row by row, in float64 numpy / plain Python ----------
def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x[np.isfinite(x)].max()
    return x - (m + math.log(np.exp(x - m).sum()))


def np_step(base_row, reward_row, V, k, weights=None, alpha_override=None, T=0.0, u=None):
    lp_b, lp_r = np_log_softmax(base_row[:V]), np_log_softmax(reward_row[:V])

    def ent(lp):
        return -sum(math.exp(v) * v for v in lp if math.isfinite(v))

    def topk(lp):
        order = sorted(range(V), key=lambda j: (-lp[j], j))[:k]
        return [lp[j] for j in order], order

    if alpha_override is not None:
        alpha = alpha_override
    else:
        (vb, ib), (vr, ir) = topk(lp_b), topk(lp_r)
        E = weights["embed"].double().numpy()
        x = [max(v, -100.0) for v in vb] + [max(v, -100.0) for v in vr] + [ent(lp_b), ent(lp_r)]
        x += [e for j in ib for e in E[j]] + [e for j in ir for e in E[j]]
        pre = weights["w1"].double().numpy() @ np.array(x) + weights["b1"].double().numpy()
        h = pre / (1 + np.exp(-pre))
        z = float(h @ weights["w2"].double().numpy() + float(weights["b2"]))
        alpha = weights["alpha_max"] / (1 + math.exp(-z))
    s = lp_b + (0 if alpha == 0 else alpha * lp_r)
    if T == 0:
        token = int(np.argmax(s))  # numpy: first maximal index
        lp = np_log_softmax(s)
    else:
        lp = np_log_softmax(s / T)
        p = np.exp(lp)
        c, token = 0.0, None
        for j in range(V):
            c += p[j]
            if c > u * p.sum():
                token = j
                break
        if token is None:
            token = max(j for j in range(V) if p[j] > 0)
    return token, alpha, lp[token], lp


def check_against_numpy(base, reward, V, router=None, alpha_override=None, T=0.0, uniform=None):
    k = router.k if router is not None else None
    w = router.weights() if router is not None else None
    tokens, alpha, token_lp, lp = reference.reference_step(
        base, reward, vocab_size=V, k=k, router_weights=w, alpha_override=alpha_override,
        temperature=T, uniform=uniform, return_logprobs=True)
    for b in range(base.shape[0]):
        u = None if uniform is None else float(uniform[b])
        t_np, a_np, tlp_np, lp_np = np_step(base[b].double().numpy(), reward[b].double().numpy(), V, k, w,
                                            alpha_override, T, u)
        assert int(tokens[b]) == t_np
        assert float(alpha[b]) == pytest.approx(a_np, abs=1e-5)
        assert float(token_lp[b]) == pytest.approx(tlp_np, abs=1e-4)
        finite = np.isfinite(lp_np)
        assert np.array_equal(np.isfinite(lp[b].numpy()), finite)
        np.testing.assert_allclose(lp[b].numpy()[finite], lp_np[finite], atol=1e-4)


@pytest.mark.parametrize("k", [1, 3, 7])  # K = 1 and K = V (= 7)
@pytest.mark.parametrize("T", [0.0, 0.7, 1.0])
def test_reference_matches_numpy_small_vocab(k, T):
    torch.manual_seed(k)
    V, width, B = 7, 9, 4  # the logits are wider than the vocabulary
    base = torch.randn(B, width) * 2
    reward = torch.randn(B, width) * 2
    base[:, V:] = 50.0  # columns past V must be ignored even when they dominate
    reward[:, V:] = 50.0
    router = taro_ext.TopKRouter(V, k=k, embed_dim=3, hidden=5)
    check_against_numpy(base, reward, V, router=router, T=T, uniform=torch.rand(B))


def test_reference_ties_and_masked_entries():
    V = 6
    base = torch.tensor([[1.0, 3.0, 3.0, NEG_INF, 0.5, 3.0],
                         [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    reward = torch.tensor([[0.0, 0.0, 1.0, 1.0, NEG_INF, NEG_INF],
                           [NEG_INF, 1.0, 1.0, 0.0, 0.0, 5.0]])
    router = taro_ext.TopKRouter(V, k=4, embed_dim=2, hidden=3)
    check_against_numpy(base, reward, V, router=router)
    check_against_numpy(base, reward, V, router=router, T=0.5, uniform=torch.tensor([0.3, 0.99]))
    # Tie rule of the top-K lists, by hand: equal values in id order, -inf last.
    stats = reference.row_stats(base, reward, V, 4)
    assert stats.i_b[0].tolist() == [1, 2, 5, 0]
    assert stats.i_b[1].tolist() == [0, 1, 2, 3]
    assert stats.i_r[0].tolist() == [2, 3, 0, 1]
    # Uniform row: entropy log(6); all masked-free top values equal -log(6).
    assert float(stats.h_b[1]) == pytest.approx(math.log(6), abs=1e-6)
    assert torch.allclose(stats.v_b[1], torch.full((4,), -math.log(6)))


def test_feature_floor_keeps_masked_topk_finite():
    V = 5
    base = torch.tensor([[0.0, NEG_INF, NEG_INF, NEG_INF, NEG_INF]])
    reward = torch.tensor([[1.0, 2.0, NEG_INF, NEG_INF, NEG_INF]])
    router = taro_ext.TopKRouter(V, k=4, embed_dim=2, hidden=3)
    stats = reference.row_stats(base, reward, V, 4)
    x = reference.topk_features(stats, router.embed.detach())
    assert torch.isfinite(x).all()
    assert x[0, :4].tolist() == [0.0, -100.0, -100.0, -100.0]
    check_against_numpy(base, reward, V, router=router)


def test_greedy_argmax_ties_to_lowest_id():
    base = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    reward = torch.zeros(1, 4)
    out = taro_ext.genarm_step(base, reward, 1.0, backend="torch")
    assert out.tokens.tolist() == [1]


def test_sampling_inverse_cdf_by_hand():
    # p = [0.1, 0.2, 0.3, 0.4] exactly: base gives it, reward is flat, T = 1.
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    base, reward = p.log(), torch.zeros(1, 4)
    expected = {0.05: 0, 0.1: 1, 0.29: 1, 0.31: 2, 0.59: 2, 0.61: 3, 0.999: 3}
    for u, tok in expected.items():
        out = taro_ext.genarm_step(base, reward, 1.0, temperature=1.0, uniform=torch.tensor([u]), backend="torch",
                                  return_logprobs=True)
        assert int(out.tokens) == tok, u
        assert float(out.token_logprobs) == pytest.approx(math.log(float(p[0, tok])), abs=1e-6)


def test_sampling_never_picks_zero_probability_token():
    base = torch.tensor([[0.0, 0.0, NEG_INF, NEG_INF]])
    reward = torch.zeros(1, 4)
    for u in (0.0, 0.5, 0.9999999):
        out = taro_ext.genarm_step(base, reward, 1.0, temperature=1.0, uniform=torch.tensor([u]), backend="torch")
        assert int(out.tokens) in (0, 1)


@pytest.mark.parametrize("T", [0.0, 0.8])
def test_alpha_override_zero_is_the_base_model(T):
    torch.manual_seed(0)
    base, reward = torch.randn(5, 300), torch.randn(5, 300)
    reward[:, 7] = NEG_INF  # the reward model's mask must not leak in when alpha == 0
    router = taro_ext.TopKRouter(300)
    u = torch.rand(5)
    out = taro_ext.taro_step(base, reward, router, alpha_override=0.0, temperature=T, uniform=u,
                             return_logprobs=True, backend="torch")
    lp_base = torch.log_softmax(base / (T if T > 0 else 1.0), dim=-1)
    torch.testing.assert_close(out.logprobs, lp_base, atol=1e-5, rtol=0)
    if T == 0:
        assert out.tokens.tolist() == base.argmax(-1).tolist()
    torch.testing.assert_close(out.token_logprobs, lp_base.gather(-1, out.tokens[:, None])[:, 0])
    assert out.alpha.tolist() == [0.0] * 5


@pytest.mark.parametrize("alpha,T", [(0.5, 1.0), (1.0, 0.7), (2.0, 1.3)])
def test_genarm_is_softmax_of_mixed_logprobs(alpha, T):
    torch.manual_seed(1)
    base, reward = torch.randn(3, 50), torch.randn(3, 50)
    out = taro_ext.genarm_step(base, reward, alpha, temperature=T, uniform=torch.rand(3), return_logprobs=True,
                               backend="torch")
    lp_b, lp_r = torch.log_softmax(base, -1), torch.log_softmax(reward, -1)
    expected = torch.softmax((lp_b + alpha * lp_r) / T, dim=-1)
    torch.testing.assert_close(out.logprobs.exp(), expected, atol=1e-6, rtol=1e-5)
    # GenARM's own formulation: divide by (1 + alpha), sample at temperature T / (1 + alpha).
    genarm_code = torch.softmax(((lp_b + alpha * lp_r) / (1 + alpha)) / (T / (1 + alpha)), dim=-1)
    torch.testing.assert_close(out.logprobs.exp(), genarm_code, atol=1e-6, rtol=1e-5)


def test_full_logits_router_matches_numpy():
    torch.manual_seed(2)
    V = 6
    router = taro_ext.FullLogitsRouter(V, hidden=4)
    base, reward = torch.randn(2, V), torch.randn(2, V)
    reward[0, 3] = NEG_INF
    out = taro_ext.taro_step(base, reward, router, backend="torch")
    w = router.weights()
    for b in range(2):
        x = np.concatenate([np_log_softmax(base[b].numpy()), np_log_softmax(reward[b].numpy())])
        x = np.maximum(x, -100.0)
        pre = w["w1"].double().numpy() @ x + w["b1"].double().numpy()
        z = float((pre / (1 + np.exp(-pre))) @ w["w2"].double().numpy() + float(w["b2"]))
        assert float(out.alpha[b]) == pytest.approx(2.0 / (1 + math.exp(-z)), abs=1e-5)


def test_router_forward_matches_step_alpha_and_has_gradients():
    torch.manual_seed(3)
    router = taro_ext.TopKRouter(100, k=8, embed_dim=4, hidden=16)
    base, reward = torch.randn(4, 110), torch.randn(4, 110)
    alpha = router(base, reward)
    step = taro_ext.taro_step(base, reward, router, backend="torch")
    torch.testing.assert_close(alpha.detach(), step.alpha)
    alpha.sum().backward()
    assert router.w1.grad is not None and router.w1.grad.abs().sum() > 0
    assert router.embed.grad.abs().sum() > 0
