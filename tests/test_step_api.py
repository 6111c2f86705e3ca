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


def test_import_without_gpu_lists_backends_and_registers_the_ops_in_a_fresh_process():
    # The ops exist right after `import taro_ext`, before any step ran (torch.compile, custom decoders).
    code = ("import taro_ext, torch\n"
            "print(taro_ext.available_backends())\n"
            "print(torch.ops.taro_ext.fused_step_triton.default)\n"
            "if 'cpu' in taro_ext.available_backends('cpu'): print(torch.ops.taro_ext.fused_step.default)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    assert "torch" in lines[0] and "fused_step_triton" in lines[1]
    assert len(lines) == (3 if "'cpu'" in lines[0] else 2)


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
    ("string return_logprobs", dict(return_logprobs="no"), TypeError, "return_logprobs"),
    ("int return_logprobs", dict(return_logprobs=1), TypeError, "return_logprobs"),
    ("None check_inputs", dict(check_inputs=None), TypeError, "check_inputs"),
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


# --- scalars: what the fp32 kernels can compute, Python and NumPy integers, never bools ---------

def _backends_here():
    return taro_ext.available_backends("cpu")


@pytest.mark.parametrize("temperature", [1e-40, 1e-5, 2e4, 1e39, float("inf"), float("nan"), -1e-4])
def test_temperature_outside_what_fp32_computes_is_an_error(router, temperature):
    with pytest.raises(ValueError, match="temperature"):
        taro_ext.taro_step(logits(), logits(), router, temperature=temperature, uniform=torch.rand(2),
                           backend="torch")
    with pytest.raises(ValueError, match="temperature"):
        taro_ext.genarm_step(logits(), logits(), 1.0, temperature=temperature, uniform=torch.rand(2))


@pytest.mark.parametrize("backend", _backends_here())
def test_temperature_at_the_bounds_gives_finite_logprobs_and_no_masked_token(router, backend):
    torch.manual_seed(2)
    b, r = logits(3) * 30, logits(3) * 30
    b[:, ::2] = float("-inf")  # even ids masked by the base model
    for temperature in (taro_ext.reference.MIN_TEMPERATURE, taro_ext.reference.MAX_TEMPERATURE):
        for u in (torch.rand(3), torch.tensor([0.0, 0.5, 0.999999])):
            out = taro_ext.taro_step(b, r, router, temperature=temperature, uniform=u, return_logprobs=True,
                                     backend=backend)
            assert (out.tokens % 2 == 1).all(), (temperature, out.tokens)
            assert torch.isfinite(out.token_logprobs).all()
            assert torch.isfinite(out.logprobs[:, 1::2]).all() and (out.logprobs[:, ::2] == float("-inf")).all()
    # At the smallest temperature sampling is the greedy token (the reference's pick, by hand: argmax).
    out = taro_ext.taro_step(b, r, router, temperature=taro_ext.reference.MIN_TEMPERATURE,
                             uniform=torch.tensor([0.3, 0.6, 0.9]), backend=backend)
    assert out.tokens.tolist() == taro_ext.taro_step(b, r, router, backend="torch").tokens.tolist()


@pytest.mark.parametrize("alpha", [1e300, 1e5, float("inf"), float("nan"), -0.5])
def test_alpha_outside_what_fp32_computes_is_an_error(router, alpha):
    with pytest.raises(ValueError, match="alpha must"):
        taro_ext.genarm_step(logits(), logits(), alpha)
    with pytest.raises(ValueError, match="alpha_override"):
        taro_ext.taro_step(logits(), logits(), router, alpha_override=alpha)
    with pytest.raises(ValueError, match="alpha_max"):
        taro_ext.TopKRouter(V, k=4, alpha_max=alpha if alpha > 0 else 0.0)
    # The largest allowed alpha still gives the reward model's pick (finite, reward-dominated).
    torch.manual_seed(1)
    b, r = logits(), logits()
    out = taro_ext.genarm_step(b, r, taro_ext.reference.MAX_ALPHA, return_logprobs=True)
    assert out.tokens.tolist() == r.argmax(-1).tolist() and torch.isfinite(out.token_logprobs).all()


def test_bools_are_not_numbers():
    with pytest.raises(TypeError, match="temperature"):
        taro_ext.genarm_step(logits(), logits(), 1.0, temperature=True, uniform=torch.rand(2))
    with pytest.raises(TypeError, match="alpha"):
        taro_ext.genarm_step(logits(), logits(), True)
    with pytest.raises(TypeError, match="vocab_size"):
        taro_ext.genarm_step(logits(), logits(), 1.0, vocab_size=True)
    with pytest.raises(TypeError, match="vocab_size"):
        taro_ext.genarm_step(logits(), logits(), 1.0, vocab_size=float(V))
    with pytest.raises(TypeError, match="k"):
        taro_ext.TopKRouter(V, k=True)


def test_numpy_integers_are_accepted(router):
    np = pytest.importorskip("numpy")
    b, r = logits(), logits()
    want = taro_ext.taro_step(b, r, router, backend="torch")
    got = taro_ext.taro_step(b, r, router, vocab_size=np.int64(V), backend="torch")
    assert got.tokens.tolist() == want.tokens.tolist()
    built = taro_ext.TopKRouter(np.int64(V), k=np.int32(4), embed_dim=np.int64(3), hidden=np.int16(8))
    assert type(built.vocab_size) is int and built.k == 4
    with pytest.raises(TypeError, match="vocab_size"):
        taro_ext.genarm_step(b, r, 1.0, vocab_size=np.bool_(True))


# --- router weights: finite, any layout ----------------------------------------------------------

@pytest.mark.parametrize("name", ["w1", "b1", "w2", "b2", "embed"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_router_weights_are_an_error(router, name, value):
    with torch.no_grad():
        getattr(router, name).view(-1)[0] = value
    for backend in _backends_here():
        with pytest.raises(ValueError, match=f"router.{name} contains NaN or inf"):
            taro_ext.taro_step(logits(), logits(), router, backend=backend)


def test_the_checked_router_weights_follow_every_change_of_the_router(router):
    # The step caches the router's checked weights: each kind of change must still be seen.
    torch.manual_seed(3)
    b, r = logits(3), logits(3)
    backends = _backends_here()

    def alphas(check_inputs=False):
        return {be: taro_ext.taro_step(b, r, router, check_inputs=check_inputs, backend=be).alpha
                for be in backends}

    before = alphas()
    with torch.no_grad():
        router.b2.add_(2.0)  # in place: a new _version
    after = alphas()
    for be in backends:
        assert (after[be] > before[be] + 1e-3).all(), be
        torch.testing.assert_close(after[be], after["torch"], atol=1e-4, rtol=0)
    router.alpha_max = 1.0
    assert (alphas()["torch"] < 1.0).all() and all(a.max() < 1.0 for a in alphas().values())
    router.w2 = torch.nn.Parameter(torch.zeros(8))  # a new parameter: alpha = alpha_max * sigmoid(b2)
    for a in alphas().values():
        torch.testing.assert_close(a, torch.full((3,), float(torch.sigmoid(router.b2.detach()))), atol=1e-5, rtol=0)
    with torch.no_grad():
        router.w1.data = torch.randn(8, 5)  # same Parameter, new data of the wrong shape
    for be in backends:
        with pytest.raises(ValueError, match="router.w1 has shape"):
            taro_ext.taro_step(b, r, router, check_inputs=False, backend=be)
    with torch.inference_mode():  # inference tensors keep no version counter
        frozen = taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8)
    for be in backends:
        torch.testing.assert_close(taro_ext.taro_step(b, r, frozen, backend=be).alpha,
                                   taro_ext.taro_step(b, r, frozen, backend="torch").alpha, atol=1e-4, rtol=0)


def test_genarm_step_names_the_logits_that_are_not_tensors():
    with pytest.raises(TypeError, match="base_logits must be a torch.Tensor"):
        taro_ext.genarm_step([[0.0] * V] * 2, logits(), 1.0)


def test_float64_uniform_just_below_one_is_in_range(router):
    # 1 - 1e-12 is in [0, 1) but rounds to 1.0 in fp32: the step takes it as the largest fp32 below 1
    # (the last token with positive probability), the same as the reference.
    b, r = logits(), logits()
    u = torch.tensor([1.0 - 1e-12, 0.5], dtype=torch.float64)
    want = taro_ext.taro_step(b, r, router, temperature=1.0, uniform=u.float().clamp_max(1 - 2**-24), backend="torch")
    for backend in _backends_here():
        got = taro_ext.taro_step(b, r, router, temperature=1.0, uniform=u, backend=backend)
        assert got.tokens.tolist() == want.tokens.tolist(), backend


def test_value_checks_under_torch_compile_fullgraph_say_what_to_do():
    def step(b, r):
        return taro_ext.genarm_step(b, r, 1.0).tokens

    with pytest.raises(Exception, match="check_inputs=False"):
        torch.compile(step, fullgraph=True)(logits(), logits())


def test_router_weights_copied_for_the_kernels_follow_writes_through_data(router):
    # A non-contiguous parameter is copied by router.weights(); a write through .data keeps the
    # parameter's _version, so such a router's weights must not be cached between steps.
    b, r = logits(3), logits(3)
    with torch.no_grad():
        router.w1.data = router.w1.data.t().contiguous().t()
    for backend in _backends_here():
        taro_ext.taro_step(b, r, router, backend=backend)
        router.w1.data.mul_(0.5)
        torch.testing.assert_close(taro_ext.taro_step(b, r, router, backend=backend).alpha, router(b, r).detach(),
                                   atol=1e-4, rtol=0)


def test_bad_alpha_max_is_an_error_even_without_value_checks(router):
    for value in (float("nan"), float("inf"), 0.0, 1e300):
        router.alpha_max = value
        with pytest.raises(ValueError, match="alpha_max"):
            taro_ext.taro_step(logits(), logits(), router, check_inputs=False, backend="torch")


@pytest.mark.parametrize("name,value", [("w1", 1e37), ("w2", 1e37), ("embed", 1e38)])
def test_router_weights_that_can_overflow_fp32_are_an_error(router, name, value):
    with torch.no_grad():
        getattr(router, name).view(-1)[0] = value
    for backend in _backends_here():
        with pytest.raises(ValueError, match="overflow fp32"):
            taro_ext.taro_step(logits(), logits(), router, backend=backend)
    # Large weights whose worst case stays in fp32 are legal and give a finite alpha.
    with torch.no_grad():
        getattr(router, name).view(-1)[0] = 1e4
    assert torch.isfinite(taro_ext.taro_step(logits(), logits(), router, backend="torch").alpha).all()


def test_non_contiguous_router_weights_give_the_contiguous_result(router):
    torch.manual_seed(7)
    b, r = logits(3), logits(3)
    want = taro_ext.taro_step(b, r, router, backend="torch")
    with torch.no_grad():
        router.w1.data = router.w1.data.t().contiguous().t()  # same shape and values, column-major
        router.embed.data = router.embed.data.t().contiguous().t()
    assert not router.w1.is_contiguous()
    for backend in _backends_here():
        got = taro_ext.taro_step(b, r, router, backend=backend)
        assert got.tokens.tolist() == want.tokens.tolist(), backend
        torch.testing.assert_close(got.alpha, want.alpha, atol=1e-4, rtol=0)


# --- loading and saving routers ------------------------------------------------------------------

def _rewrite_weights(directory, **changes):
    from safetensors.torch import load_file, save_file

    path = os.path.join(directory, WEIGHTS_NAME)
    tensors = load_file(path)
    tensors.update(changes)
    save_file(tensors, path)


def test_router_config_sizes_are_checked_before_allocating(tmp_path, router):
    router.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / CONFIG_NAME).read_text())
    for bad, text in (({"vocab_size": 10 ** 9}, "vocab_size"), ({"vocab_size": 1e9}, "vocab_size"),
                      ({"hidden": 10 ** 7}, "parameters"), ({"k": "4"}, "k"), ({"embed_dim": -1}, "embed_dim"),
                      ({"alpha_max": 1e300}, "alpha_max"), ({"colour": "red"}, "colour")):
        (tmp_path / CONFIG_NAME).write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=f"{CONFIG_NAME}: bad router config: .*{text}"):
            taro_ext.load_router(str(tmp_path))
    (tmp_path / CONFIG_NAME).write_text(json.dumps([cfg]))
    with pytest.raises(ValueError, match="JSON object"):
        taro_ext.load_router(str(tmp_path))


def test_router_weights_in_the_file_are_checked(tmp_path, router):
    router.save_pretrained(str(tmp_path))
    w2 = router.w2.detach().clone()
    w2[0] = float("nan")
    _rewrite_weights(tmp_path, w2=w2)
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME}: tensor 'w2' contains NaN or inf"):
        taro_ext.load_router(str(tmp_path))
    _rewrite_weights(tmp_path, w2=torch.full((8,), 1e300, dtype=torch.float64))  # finite in fp64, not in fp32
    with pytest.raises(ValueError, match="tensor 'w2' contains NaN or inf"):
        taro_ext.load_router(str(tmp_path))
    _rewrite_weights(tmp_path, w2=torch.arange(8))  # int64: refused, not cast
    with pytest.raises(ValueError, match="tensor 'w2' has dtype torch.int64"):
        taro_ext.load_router(str(tmp_path))
    _rewrite_weights(tmp_path, w2=router.w2.detach().double())  # another float dtype: converted
    loaded = taro_ext.load_router(str(tmp_path))
    assert loaded.w2.dtype == torch.float32 and torch.equal(loaded.w2, router.w2)


def test_save_pretrained_refuses_a_file_or_a_foreign_directory_and_keeps_a_training_run(tmp_path, router):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        router.save_pretrained(str(tmp_path / "file"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no previous save"):
        router.save_pretrained(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    out = tmp_path / "run"
    router.save_pretrained(str(out))
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.pt").write_bytes(b"state")
    (out / "train_log.json").write_text("{}")
    (out / "stale.bin").write_bytes(b"old artifact file")
    other = taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8)
    other.save_pretrained(str(out))
    assert torch.equal(taro_ext.load_router(str(out)).w1, other.w1)
    assert (out / "checkpoint-3" / "trainer_state.pt").read_bytes() == b"state"
    assert (out / "train_log.json").is_file() and not (out / "stale.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["file", "mine", "run"]  # no temporary directory left


@pytest.mark.parametrize("fail_at", ["save_file", "fsync", "exchange"])
def test_a_save_interrupted_at_any_point_leaves_the_old_router(tmp_path, router, monkeypatch, fail_at):
    from taro_ext import atomic

    class Killed(BaseException):
        pass

    router.save_pretrained(str(tmp_path / "r"))
    new = taro_ext.TopKRouter(V, k=4, embed_dim=3, hidden=8)
    calls = {"n": 0}

    def fail(*args, **kwargs):
        raise Killed()

    def fail_on_second(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Killed()
            return real(*args, **kwargs)
        return wrapped

    if fail_at == "save_file":
        import safetensors.torch

        monkeypatch.setattr(safetensors.torch, "save_file", fail)
    elif fail_at == "fsync":
        monkeypatch.setattr(atomic, "_fsync_path", fail_on_second(atomic._fsync_path))
    else:
        monkeypatch.setattr(atomic, "_exchange", fail)
    with pytest.raises(Killed):
        new.save_pretrained(str(tmp_path / "r"))
    assert torch.equal(taro_ext.load_router(str(tmp_path / "r")).w1, router.w1)


def test_a_killed_saving_process_leaves_a_loadable_router(tmp_path, router):
    """SIGKILL a process that keeps replacing a router with two alternating ones: whatever moment
    the kill lands on, the directory loads and holds one of the two."""
    import signal
    import time

    target = tmp_path / "r"
    code = (f"import sys, torch, taro_ext\n"
            f"routers = [taro_ext.TopKRouter({V}, k=4, embed_dim=3, hidden=8) for _ in range(2)]\n"
            f"for i, r in enumerate(routers):\n"
            f"    with torch.no_grad(): r.b2.fill_(i)\n"
            f"routers[0].save_pretrained({str(target)!r})\n"
            f"print('ready', flush=True)\n"
            f"i = 0\n"
            f"while True:\n"
            f"    i += 1\n"
            f"    routers[i % 2].save_pretrained({str(target)!r})\n")
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert taro_ext.load_router(str(target)).b2.item() in (0.0, 1.0)
