"""The public API's contract: result object, backend choice, every bad input named."""
import json
import os
import subprocess
import sys

import pytest
import torch

import taro_ext
from taro_ext.router import CONFIG_NAME, WEIGHTS_NAME

V = 40


@pytest.fixture
def router():
    torch.manual_seed(0)
    return taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8)


def logits(b=2, width=V, dtype=torch.float32):
    return torch.randn(b, width, dtype=dtype)


def test_result_fields_and_logprobs_only_when_asked(router):
    out = taro_ext.taro_step(logits(), logits(), router, backend="torch")
    assert out.tokens.dtype == torch.int64 and out.tokens.shape == (2,)
    assert out.alpha.dtype == torch.float32
    assert out.token_logprobs is None and out.logprobs is None
    out = taro_ext.taro_step(logits(), logits(), router, return_logprobs=True, backend="torch")
    assert out.logprobs.shape == (2, V) and out.logprobs.dtype == torch.float32
    assert out.token_logprobs.shape == (2,)
    assert ((out.alpha > 0) & (out.alpha < router.alpha_max)).all()


def test_available_backends_always_has_reference_and_auto_resolves(router):
    assert "torch" in taro_ext.available_backends()
    out = taro_ext.taro_step(logits(), logits(), router)  # auto
    ref = taro_ext.taro_step(logits(), logits(), router, backend="torch")
    assert out.tokens.shape == ref.tokens.shape


def test_import_without_gpu_lists_backends_in_a_fresh_process():
    code = "import taro_ext, torch; print(taro_ext.available_backends())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch" in res.stdout


def test_mixed_dtypes_are_promoted(router):
    torch.manual_seed(5)
    b, r = logits(), logits()
    mixed = taro_ext.taro_step(b.bfloat16(), r, router, backend="torch")
    same = taro_ext.taro_step(b.bfloat16().float(), r, router, backend="torch")
    assert mixed.tokens.tolist() == same.tokens.tolist()
    torch.testing.assert_close(mixed.alpha, same.alpha)


BAD_INPUTS = [
    # (description, kwargs override, exception, text the message must contain)
    ("batch mismatch", dict(reward_logits=logits(3)), ValueError, "batch"),
    ("width below V", dict(base_logits=logits(2, V - 1)), ValueError, "base_logits"),
    ("reward width below V", dict(reward_logits=logits(2, V - 5)), ValueError, "reward_logits"),
    ("1-D logits", dict(base_logits=torch.randn(V)), ValueError, "base_logits"),
    ("int logits", dict(base_logits=torch.zeros(2, V, dtype=torch.int64)), TypeError, "base_logits"),
    ("not a tensor", dict(reward_logits=[[0.0] * V] * 2), TypeError, "reward_logits"),
    ("non-contiguous rows", dict(base_logits=torch.randn(V, 2).t()), ValueError, "base_logits"),
    ("negative temperature", dict(temperature=-1.0), ValueError, "temperature"),
    ("uniform missing", dict(temperature=0.7), ValueError, "uniform"),
    ("uniform out of range", dict(temperature=0.7, uniform=torch.tensor([0.5, 1.0])), ValueError, "uniform"),
    ("uniform negative", dict(temperature=0.7, uniform=torch.tensor([-0.1, 0.5])), ValueError, "uniform"),
    ("uniform wrong shape", dict(temperature=0.7, uniform=torch.rand(3)), ValueError, "uniform"),
    ("vocab_size above router", dict(vocab_size=V + 1, base_logits=logits(2, V + 1),
                                     reward_logits=logits(2, V + 1)), ValueError, "vocab_size"),
    ("K > V", dict(vocab_size=3), ValueError, "k="),
    ("vocab_size zero", dict(vocab_size=0), ValueError, "vocab_size"),
    ("bad backend", dict(backend="tpu"), ValueError, "backend"),
    ("negative alpha_override", dict(alpha_override=-1.0), ValueError, "alpha_override"),
    ("string alpha_override", dict(alpha_override="1"), TypeError, "alpha_override"),
]


@pytest.mark.parametrize("desc,override,exc,text", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_name_the_argument(router, desc, override, exc, text):
    kwargs = dict(base_logits=logits(), reward_logits=logits(), router=router, backend="torch")
    kwargs.update(override)
    with pytest.raises(exc, match=text):
        taro_ext.taro_step(**kwargs)


@pytest.mark.parametrize("which", ["base_logits", "reward_logits"])
def test_nan_and_all_masked_rows_are_errors(router, which):
    bad = logits()
    bad[1, 3] = float("nan")
    args = dict(base_logits=logits(), reward_logits=logits(), router=router, backend="torch")
    with pytest.raises(ValueError, match=f"{which} contains NaN"):
        taro_ext.taro_step(**{**args, which: bad})
    masked = logits()
    masked[0] = float("-inf")
    with pytest.raises(ValueError, match=f"{which} has a row with no finite logit"):
        taro_ext.taro_step(**{**args, which: masked})
    # The value checks are skippable (for CUDA-graph capture); structural ones are not.
    taro_ext.taro_step(**{**args, which: bad}, check_inputs=False)


def test_disjoint_supports_are_an_error(router):
    b, r = logits(), logits()
    b[:, V // 2:] = float("-inf")
    r[:, :V // 2] = float("-inf")
    with pytest.raises(ValueError, match="no token is finite in both"):
        taro_ext.taro_step(b, r, router, backend="torch")
    # With alpha 0 the reward row does not enter the score: legal.
    out = taro_ext.taro_step(b, r, router, alpha_override=0.0, backend="torch")
    assert out.tokens.tolist() == b.argmax(-1).tolist()


def test_router_weight_errors(router):
    with torch.no_grad():
        router.w1.data = torch.randn(8, 7)
    with pytest.raises(ValueError, match="router.w1"):
        taro_ext.taro_step(logits(), logits(), router, backend="torch")
    r2 = taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8).double()
    with pytest.raises(TypeError, match="router.w1 must be torch.float32"):
        taro_ext.taro_step(logits(), logits(), r2, backend="torch")
    with pytest.raises(TypeError, match="router"):
        taro_ext.taro_step(logits(), logits(), object(), backend="torch")
    with pytest.raises(ValueError, match="router is required"):
        taro_ext.taro_step(logits(), logits(), None, backend="torch")


def test_full_router_only_on_torch_backend():
    full = taro_ext.FullLogitsRouter(V)
    with pytest.raises(ValueError, match="backend"):
        taro_ext.taro_step(logits(), logits(), full, backend="cpu")
    assert taro_ext.taro_step(logits(), logits(), full).tokens.shape == (2,)
    with pytest.raises(ValueError, match="must equal the full-logits router's vocab_size"):
        taro_ext.taro_step(logits(), logits(), full, vocab_size=V - 1)


def test_router_constructor_errors():
    with pytest.raises(ValueError, match="k="):
        taro_ext.TopKRouter(8, k=9)
    with pytest.raises(ValueError, match="alpha_max"):
        taro_ext.TopKRouter(8, k=2, alpha_max=0.0)
    with pytest.raises(ValueError, match="hidden"):
        taro_ext.FullLogitsRouter(8, hidden=0)


@pytest.mark.parametrize("make", [lambda: taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8, alpha_max=3.0),
                                  lambda: taro_ext.FullLogitsRouter(V, hidden=8, alpha_max=1.5)],
                         ids=["topk", "full"])
def test_router_round_trip(tmp_path, make):
    torch.manual_seed(4)
    router = make()
    router.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert cfg["format_version"] == 1 and cfg["design"] == router.design
    loaded = taro_ext.load_router(str(tmp_path))
    assert type(loaded) is type(router) and loaded.config() == router.config()
    for name, p in router.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[name])
    b, r = logits(), logits()
    assert torch.equal(taro_ext.taro_step(b, r, router, backend="torch").alpha,
                       taro_ext.taro_step(b, r, loaded, backend="torch").alpha)
    assert type(type(router).from_pretrained(str(tmp_path))) is type(router)


def test_router_load_errors(tmp_path, router):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        taro_ext.load_router(str(tmp_path / "missing"))
    router.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="vocab_size mismatch"):
        taro_ext.load_router(str(tmp_path), vocab_size=V + 1)
    with pytest.raises(ValueError, match="not a 'full' one"):
        taro_ext.FullLogitsRouter.from_pretrained(str(tmp_path))
    # A config whose shapes disagree with the weights.
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, "hidden": 9}))
    with pytest.raises(ValueError, match="shape"):
        taro_ext.load_router(str(tmp_path))
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        taro_ext.load_router(str(tmp_path))
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        taro_ext.load_router(str(tmp_path))
    (tmp_path / CONFIG_NAME).write_text(json.dumps(cfg))
    (tmp_path / WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        taro_ext.load_router(str(tmp_path))
    os.remove(tmp_path / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        taro_ext.load_router(str(tmp_path))
