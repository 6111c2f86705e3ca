"""The Triton step's own properties: one launch and no PyTorch compute around it, and the
cross-block and cross-program paths (running top-K merge, online rescaling, prefix-sum
carry; rows split across programs with the last-program-done merge of statistics, top-K
lists, argmax and the sampling CDF) that the shared parity tests reach only with rows
wider than one block.

Parity over dtypes, temperatures and K for every backend is in test_fused_step.py; here
``block_v`` is forced small so a few hundred columns span several blocks, and ``slices``
sets the programs per row.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taro_ext import available_backends, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VOCAB = 300
WIDTH = 310  # wider than VOCAB: columns past it are padding the step must ignore
pytestmark = pytest.mark.skipif("triton" not in available_backends(DEVICE),
                                reason="Triton needs a GPU or TRITON_INTERPRET=1")

if "triton" in available_backends(DEVICE):
    from taro_ext import triton_step


def router_weights(vocab, k, d, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_in = 2 * k + 2 + 2 * k * d
    w = dict(embed=torch.randn(vocab, d, generator=g), w1=torch.randn(hidden, n_in, generator=g) / n_in ** 0.5,
             b1=0.1 * torch.randn(hidden, generator=g), w2=torch.randn(hidden, generator=g) / hidden ** 0.5,
             b2=torch.tensor(0.3))
    w = {name: t.to(DEVICE) for name, t in w.items()}
    w["alpha_max"] = 2.0
    return w


def run_both(base, reward, *, k, temperature, uniform=None, alpha_override=None, block_v=None, slices=None, d=3,
             hidden=5, return_logprobs=True):
    vocab = VOCAB
    w = router_weights(vocab, k, d, hidden)
    ref = reference.reference_step(base, reward, vocab_size=vocab, k=k, router_weights=w,
                                   alpha_override=alpha_override, temperature=temperature, uniform=uniform,
                                   return_logprobs=True)
    out = triton_step.fused_step_triton(base, reward, w["embed"], w["w1"], w["b1"], w["w2"], w["b2"],
                                        w["alpha_max"], k, vocab, temperature, uniform, alpha_override,
                                        return_logprobs, block_v=block_v, slices=slices)
    return ref, out


def assert_matches(ref, out, tol):
    tokens, alpha, token_lp, logprobs = out
    assert tokens.tolist() == ref[0].tolist()
    torch.testing.assert_close(alpha, ref[1], atol=tol, rtol=0)
    torch.testing.assert_close(token_lp, ref[2], atol=tol, rtol=0)
    if logprobs.numel():
        torch.testing.assert_close(logprobs, ref[3], atol=tol, rtol=0)  # equal -inf entries compare equal


def tie_rows():
    """Rows that stress the order rules: few distinct values (ties inside and across
    blocks and at the K-th place), masked tokens, +/-0.0, and huge values past V that
    must be ignored."""
    g = torch.Generator().manual_seed(5)
    base = torch.randint(-3, 3, (4, WIDTH), generator=g).float()
    reward = torch.randint(-3, 3, (4, WIDTH), generator=g).float()
    base[:, VOCAB:] = 1e4
    reward[:, VOCAB:] = 1e4
    base[0, :50] = float("-inf")
    reward[1, 10:200] = float("-inf")
    base[3], reward[3] = 0.0, -0.0
    return base.to(DEVICE), reward.to(DEVICE)


@pytest.mark.parametrize("k,slices", [(1, 1), (16, 5)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ties_masks_and_padding_across_blocks_and_programs(k, temperature, slices):
    base, reward = tie_rows()
    uniform = torch.tensor([0.0, 0.3, 0.6, 0.99], device=DEVICE) if temperature else None
    ref, out = run_both(base, reward, k=k, temperature=temperature, uniform=uniform, block_v=64, slices=slices)
    assert_matches(ref, out, 1e-4)


@pytest.mark.parametrize("alpha_override,temperature,logprobs",
                         [(None, 0.0, False), (None, 0.9, True), (0.7, 0.0, False), (0.7, 0.9, False), (0.7, 0.9, True)])
def test_row_split_merge_paths(alpha_override, temperature, logprobs):
    """Five programs per row: a slice of only -inf in both rows (empty partials), the row's
    maximum tied between two slices (the earlier id must win), a top-K spread over every
    slice, and sampling thresholds that land in the first, a middle and the last slice of
    positive weight (GenARM rescans only that slice)."""
    g = torch.Generator().manual_seed(7)
    base = 2 * torch.randn(4, WIDTH, generator=g)
    reward = 2 * torch.randn(4, WIDTH, generator=g)
    base[:, 64:128] = reward[:, 64:128] = float("-inf")  # slice 1 of 5 (64 columns each)
    base[0, [40, 200]] = reward[0, [40, 200]] = 9.0  # tie across slices 0 and 3
    base[:, VOCAB:] = reward[:, VOCAB:] = 1e4
    uniform = torch.tensor([0.5, 0.0, 0.999, 0.37]) if temperature else None
    ref, out = run_both(base.to(DEVICE), reward.to(DEVICE), k=16, temperature=temperature,
                        uniform=None if uniform is None else uniform.to(DEVICE), alpha_override=alpha_override,
                        block_v=64, slices=5, return_logprobs=logprobs)
    assert_matches(ref, out, 1e-4)
    if not temperature:
        assert out[0][0].item() == 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_rows_across_blocks(dtype):
    g = torch.Generator().manual_seed(2)
    base = (3 * torch.randn(3, WIDTH, generator=g)).to(dtype).to(DEVICE)
    reward = (3 * torch.randn(3, WIDTH, generator=g)).to(dtype).to(DEVICE)
    uniform = torch.rand(3, generator=g).to(DEVICE)
    ref, out = run_both(base, reward, k=16, temperature=0.7, uniform=uniform, block_v=64, slices=3, d=4, hidden=9)
    assert_matches(ref, out, 1e-4 if dtype == torch.float32 else 2e-2)


def test_sampling_never_returns_a_zero_probability_token():
    """u just below 1 with trailing masked tokens: the prefix sum may never exceed u * total
    in fp32, and the token must then be the last one with p > 0, never a masked one."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, VOCAB, generator=g)
    reward = torch.randn(3, VOCAB, generator=g)
    base[:, 250:] = float("-inf")
    base[1] = float("-inf")
    base[1, 3] = base[1, 100] = 1.0
    uniform = torch.tensor([0.0, 0.99999994, 0.99999994])
    for alpha_override in (None, 0.0):
        ref, out = run_both(base.to(DEVICE), reward.to(DEVICE), k=4, temperature=1.0, uniform=uniform.to(DEVICE),
                            alpha_override=alpha_override, block_v=32, slices=4)
        assert_matches(ref, out, 1e-4)
        assert out[0].tolist()[:2] == [0, 100]
        assert (out[0] < 250).all()


class _RecordOps(TorchDispatchMode):
    """Records the aten ops run while active, except while ``paused`` (the launch itself:
    the interpreter moves the arguments with torch ops of its own)."""

    def __init__(self):
        super().__init__()
        self.ops, self.paused = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("alpha_override,temperature,logprobs", [(None, 0.0, False), (0.5, 0.8, True)])
def test_one_launch_and_no_torch_compute_around_it(monkeypatch, alpha_override, temperature, logprobs):
    kernel = triton_step._taro_step_kernel
    recorder = _RecordOps()
    launches = []

    class CountingKernel:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(grid)
                recorder.paused = True
                try:
                    kernel[grid](*args, **kwargs)
                finally:
                    recorder.paused = False
            return launch

    monkeypatch.setattr(triton_step, "_taro_step_kernel", CountingKernel())
    k = 4
    w = router_weights(VOCAB, k, 3, 5)
    base, reward = torch.randn(2, WIDTH, device=DEVICE), torch.randn(2, WIDTH, device=DEVICE)
    uniform = torch.rand(2, device=DEVICE)

    def step():
        return triton_step.fused_step_triton(base, reward, w["embed"], w["w1"], w["b1"], w["w2"], w["b2"],
                                             w["alpha_max"], k, VOCAB, temperature, uniform, alpha_override,
                                             logprobs, block_v=64, slices=3)

    first = step()  # allocates the per-stream row counters once (zeroed); later steps reuse them
    launches.clear()
    with recorder:
        out = step()
    assert launches == [(2 * 3,)]  # one launch, three programs per row
    assert {op.overloadpacket for op in recorder.ops} == {torch.ops.aten.empty}, recorder.ops
    assert out[3].shape == ((2, VOCAB) if logprobs else (2, 0))
    # The last program of each row reset its counter: the second step saw a clean state.
    assert torch.equal(out[0], first[0]) and torch.equal(out[1], first[1])
    assert not triton_step._row_counters(2, base.device)[:2].any()


def test_block_size_must_be_a_power_of_two():
    w = router_weights(VOCAB, 1, 3, 5)
    x = torch.randn(1, VOCAB, device=DEVICE)
    with pytest.raises(ValueError, match="block_v"):
        triton_step.fused_step_triton(x, x, w["embed"], w["w1"], w["b1"], w["w2"], w["b2"], 2.0, 1, VOCAB, 0.0,
                                      None, None, False, block_v=48)


_COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from taro_ext.triton_step import _taro_step_kernel

pointers = dict(base_ptr="*bf16", reward_ptr="*bf16", embed_ptr="*bf16", w1_ptr="*fp32", b1_ptr="*fp32",
                w2_ptr="*fp32", b2_ptr="*fp32", uniform_ptr="*fp32", tokens_ptr="*i64", alpha_ptr="*fp32",
                token_lp_ptr="*fp32", logprobs_ptr="*fp32")
pointers.update(stats_ptr="*fp32", keys_ptr="*i64", counter_ptr="*i32")
scalars = dict(V="i32", CHUNK="i32", S="i32", alpha_max="fp32", alpha_override="fp32", temperature="fp32")
for router, sample, logprobs in ((True, False, False), (True, True, True), (False, True, False), (False, False, True)):
    constants = dict(K=16, K_PAD=16, D=16, D_PAD=16, H=64, H_PAD=64, H_BLOCK=16, S_PAD=64, BLOCK_V=2048,
                     USE_ROUTER=router, SAMPLE=sample, WRITE_LOGPROBS=logprobs)
    signature = {name: pointers.get(name) or scalars.get(name) or ("constexpr" if name in constants else "i64")
                 for name in _taro_step_kernel.arg_names}
    compiled = triton.compile(ASTSource(_taro_step_kernel, signature, constants),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8))
    assert len(compiled.asm["cubin"]) > 0
    print(router, sample, logprobs, "compiled")
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernel is compiled by the tests above")
def test_kernel_compiles_for_sm90_without_a_gpu():
    """The interpreter accepts code the compiler rejects (globals, loop-carried types):
    lower the default router's kernel (greedy; sampling with log-probs) and GenARM's
    (sampling: the crossing-slice rescan; greedy with log-probs: the rescore of a row relative to its maxima)
    to sm_90 cubins with Triton's bundled ptxas.
    bench/ptxas_report.py compiles every variant."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
