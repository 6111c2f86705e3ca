"""The fused TARo decode step as one Triton kernel launch (../shared/TARO_SPEC.md).

One program handles one batch row and reads the base and reward logits rows together
as a ``[2, BLOCK_V]`` tile (row 0 base, row 1 reward), so every per-model quantity is a
length-2 vector and both models share each loop:

1. Statistics pass over the first V columns: online max and sum-exp (rescaled when the
   max grows), the entropy term ``t = sum exp(x - m) * (x - m)`` rescaled the same way
   (``H = log z - t / z``), and, when the router runs, a running top-K per model.
2. Router: the top-K keys are unpacked to (log-prob, id), floored at -100, and ranked
   by counting larger keys (a ``[2, K_PAD, K_PAD]`` compare: cheaper than a sort for
   router-sized K, and quadratic, so K in the hundreds spills registers); each feature
   meets the W1 column of its rank. ``alpha_max * sigmoid(w2 . silu(W1 x + b1) + b2)``
   is evaluated in chunks of ``H_BLOCK`` hidden units (the ``W1`` slice for the
   embedding features is an ``[H_BLOCK, 2, K_PAD, D_PAD]`` tile within a register budget).
   With ``alpha_override`` (GenARM) the top-K, entropies and router are compiled out.
3. Normaliser pass over the row again (from L2 on a GPU): online max and sum-exp of
   ``s / T`` (``s`` for greedy) with ``s = lp_b + alpha * lp_r`` (reward term 0 when
   alpha == 0), plus the running argmax (lowest id on ties) for greedy.
4. Scan pass, only for sampling or when log-probs are written: per block ``tl.cumsum``
   of ``p = exp(s / T - M)`` on top of the running prefix; the token is the smallest id
   with ``p > 0`` whose inclusive prefix sum exceeds ``u * Z`` (requiring ``p > 0``
   keeps a non-monotonic parallel float scan from ever returning a zero-probability
   token), else the last id with ``p > 0``. Without log-probs to write, the loop stops
   at the block where the token is found.

Top-K: each value is packed with its id into one int64, ``(ordered_bits(x) << 32) |
(0x7FFFFFFF - id)``, where ``ordered_bits`` is the order-preserving integer image of the
fp32 value (-0.0 folded into +0.0): integer order is then "larger value first, lower id
on ties", the spec's order. Ranking the raw logits equals ranking the log-probs
(log_softmax shifts a row by one constant). Blocks are merged into the running list
by threshold insertion rather than ``tl.topk``: only elements above the current K-th
best are candidates (after the first blocks almost none on real logits) and they are
inserted largest first, each replacing the current minimum; a block with no
candidate costs one compare. (Under the interpreter ``tl.topk`` of 1024 values takes
seconds, an insertion three reductions. On a GPU the worst case is a row whose logits
increase with the id, where every block inserts K.) Ranking by logit differs from the
reference's ranking by log-prob only where two different fp32 logits round to the same
log-prob; the lower id then goes first in the reference, the larger logit here.

One program per row: splitting a row across programs needs the merged statistics and
alpha before the second pass, i.e. a grid-wide barrier inside the launch, which the
Triton interpreter cannot run (its programs execute one after another). The CUDA
backend splits rows across thread blocks for small batches; this backend is the
portable one, and its speed at small batch is bounded by what one SM can stream.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

# Smallest int64: the packed key of a column past V, below every real key (-inf included).
_KEY_MASKED = tl.constexpr(-(2**63))
# Hidden units per MLP chunk are chosen so one W1 tile holds at most this many elements.
_MLP_TILE_ELEMENTS = 4096


@triton.jit
def _ordered_key(x, col):
    """int64 key ordering by value descending, then by lower id: (bits(x) << 32) | (0x7FFFFFFF - id)."""
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 and +0.0 are the same value for the tie rule
    bits = x.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0x7FFFFFFF - col).to(tl.int64)


@triton.jit
def _unpack_key(key):
    """Inverse of _ordered_key: (fp32 value, int32 id)."""
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    ids = (0x7FFFFFFF - (key & 0x7FFFFFFF)).to(tl.int32)
    return bits.to(tl.float32, bitcast=True), ids


@triton.jit
def _scaled_mixed_score(x, m, log_z, coef, temperature, SAMPLE: tl.constexpr):
    """``s / T`` (``s`` for greedy) from a [2, N] logits tile: ``s = lp_b + alpha * lp_r``.

    ``coef`` is [1, alpha]; a zero coefficient contributes 0, never 0 * -inf.
    """
    lp = (x - m[:, None]) - log_z[:, None]
    s = tl.sum(coef[:, None] * tl.where(coef[:, None] == 0.0, 0.0, lp), axis=0)
    if SAMPLE:
        s = s / temperature
    return s


@triton.jit
def _taro_step_kernel(
    base_ptr, reward_ptr, stride_base, stride_reward, V,
    embed_ptr, stride_e0, stride_e1, w1_ptr, stride_w0, stride_w1, b1_ptr, w2_ptr, b2_ptr, alpha_max,
    alpha_override, temperature, uniform_ptr,
    tokens_ptr, alpha_ptr, token_lp_ptr, logprobs_ptr, stride_lp,
    K: tl.constexpr, K_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    H: tl.constexpr, H_PAD: tl.constexpr, H_BLOCK: tl.constexpr,
    BLOCK_V: tl.constexpr, USE_ROUTER: tl.constexpr, SAMPLE: tl.constexpr, WRITE_LOGPROBS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    which = tl.arange(0, 2)  # 0: base model, 1: reward model
    row_ptrs = tl.where(which == 0, base_ptr + row * stride_base, reward_ptr + row * stride_reward)
    offs = tl.arange(0, BLOCK_V)
    slot = tl.arange(0, K_PAD)

    # ---- pass 1: row statistics and top-K lists --------------------------------------
    m = tl.full([2], float("-inf"), tl.float32)
    z = tl.zeros([2], tl.float32)
    t = tl.zeros([2], tl.float32)
    # Distinct sentinels below every real key fill the K live slots (insertion replaces
    # exactly one slot, the one equal to the minimum); padding slots sit at +max so the
    # minimum, i.e. the K-th best, only looks at live slots.
    top = tl.where(slot[None, :] < K, _KEY_MASKED + 1 + slot[None, :].to(tl.int64), 2**63 - 1)
    top = tl.broadcast_to(top, [2, K_PAD])
    kth = tl.min(top, axis=1)
    for start in range(0, V, BLOCK_V):
        col = start + offs
        in_row = col < V
        x = tl.load(row_ptrs[:, None] + col[None, :], mask=in_row[None, :], other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # exp(-inf - -inf) is NaN: a row that has seen only -inf so far has z = t = 0, and
        # any finite shift rescales those zeros correctly.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
        rescale = tl.exp(shift)
        shifted = x - m_safe[:, None]
        e = tl.exp(shifted)
        if USE_ROUTER:
            # Entropy term relative to the new max: sum e' (x - m') = r (t + z (m - m')).
            t = rescale * (t + z * shift) + tl.sum(e * tl.where(e > 0.0, shifted, 0.0), axis=1)
        z = z * rescale + tl.sum(e, axis=1)
        m = m_new
        if USE_ROUTER:
            key = tl.where(in_row[None, :], _ordered_key(x, col[None, :]), _KEY_MASKED)
            cand = tl.where(key > kth[:, None], key, _KEY_MASKED)
            best = tl.max(cand, axis=1)
            while tl.max((best > kth).to(tl.int32), axis=0) > 0:
                take = best > kth
                top = tl.where((top == kth[:, None]) & take[:, None], best[:, None], top)
                cand = tl.where(cand == best[:, None], _KEY_MASKED, cand)
                kth = tl.min(top, axis=1)
                best = tl.max(cand, axis=1)
    log_z = tl.log(z)

    # ---- router ------------------------------------------------------------------------
    if USE_ROUTER:
        entropy = log_z - t / z
        live = slot[None, :] < K
        # A live slot's place in its list is the number of live keys above it; W1 columns are
        # addressed by that rank, so the list is never physically sorted.
        above = (top[:, None, :] > top[:, :, None]) & live[:, None, :]
        rank = tl.sum(above.to(tl.int32), axis=2)  # [2, K_PAD]
        top_x, top_ids = _unpack_key(top)
        top_v = tl.where(live, tl.maximum((top_x - m[:, None]) - log_z[:, None], -100.0), 0.0)
        dcol = tl.arange(0, D_PAD)
        emb_mask = live[:, :, None] & (dcol < D)[None, None, :]
        emb = tl.load(embed_ptr + top_ids[:, :, None].to(tl.int64) * stride_e0 + dcol[None, None, :] * stride_e1,
                      mask=emb_mask, other=0.0).to(tl.float32)  # [2, K_PAD, D_PAD]
        # W1 columns: [v_b (K), v_r (K), H_b, H_r, E[i_b] (K*D), E[i_r] (K*D)].
        col_v = which[:, None] * K + rank
        col_h = 2 * K + which
        col_emb = 2 * K + 2 + which[:, None, None] * (K * D) + rank[:, :, None] * D + dcol[None, None, :]
        u = tl.load(b2_ptr).to(tl.float32)
        for h0 in range(0, H_PAD, H_BLOCK):
            hid = h0 + tl.arange(0, H_BLOCK)
            hmask = hid < H
            w_row = w1_ptr + hid.to(tl.int64) * stride_w0
            w_v = tl.load(w_row[:, None, None] + col_v[None, :, :] * stride_w1,
                          mask=hmask[:, None, None] & live[None, :, :], other=0.0)
            acc = tl.sum(tl.reshape(w_v * top_v[None, :, :], [H_BLOCK, 2 * K_PAD]), axis=1)
            w_h = tl.load(w_row[:, None] + col_h[None, :] * stride_w1, mask=hmask[:, None], other=0.0)
            acc += tl.sum(w_h * entropy[None, :], axis=1)
            w_emb = tl.load(w_row[:, None, None, None] + col_emb[None, :, :, :] * stride_w1,
                            mask=hmask[:, None, None, None] & emb_mask[None, :, :, :], other=0.0)
            acc += tl.sum(tl.reshape(w_emb * emb[None, :, :, :], [H_BLOCK, 2 * K_PAD * D_PAD]), axis=1)
            acc += tl.load(b1_ptr + hid, mask=hmask, other=0.0)
            hidden = acc * tl.sigmoid(acc)
            u += tl.sum(tl.where(hmask, hidden * tl.load(w2_ptr + hid, mask=hmask, other=0.0), 0.0), axis=0)
        alpha = alpha_max * tl.sigmoid(u)
    else:
        alpha = alpha_override + tl.zeros([], tl.float32)
    tl.store(alpha_ptr + row, alpha)
    coef = tl.where(which == 0, 1.0, alpha)

    # ---- pass 2: normaliser of s / T, and the greedy argmax ---------------------------
    big_m = float("-inf")
    big_z = 0.0
    argmax = 0
    for start in range(0, V, BLOCK_V):
        col = start + offs
        in_row = col < V
        x = tl.load(row_ptrs[:, None] + col[None, :], mask=in_row[None, :], other=float("-inf")).to(tl.float32)
        scaled = _scaled_mixed_score(x, m, log_z, coef, temperature, SAMPLE)
        blk_max, blk_arg = tl.max(scaled, axis=0, return_indices=True, return_indices_tie_break_left=True)
        argmax = tl.where(blk_max > big_m, start + blk_arg, argmax)  # strict: earlier ids win ties
        m_new = tl.maximum(big_m, blk_max)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        big_z = big_z * tl.exp(big_m - m_safe) + tl.sum(tl.exp(scaled - m_safe), axis=0)
        big_m = m_new
    log_big_z = tl.log(big_z)

    # ---- pass 3: inverse-CDF scan and/or log-prob rows ---------------------------------
    token = argmax
    if SAMPLE or WRITE_LOGPROBS:
        threshold = 0.0
        if SAMPLE:
            threshold = tl.load(uniform_ptr + row) * big_z
        prefix = 0.0
        found = V  # V: not crossed yet
        last_positive = 0
        start = 0
        while start < V:
            col = start + offs
            in_row = col < V
            x = tl.load(row_ptrs[:, None] + col[None, :], mask=in_row[None, :], other=float("-inf")).to(tl.float32)
            scaled = _scaled_mixed_score(x, m, log_z, coef, temperature, SAMPLE)
            if WRITE_LOGPROBS:
                tl.store(logprobs_ptr + row * stride_lp + col, (scaled - big_m) - log_big_z, mask=in_row)
            if SAMPLE:
                p = tl.exp(scaled - big_m)
                positive = p > 0.0
                crossed = positive & (prefix + tl.cumsum(p, axis=0) > threshold)
                found = tl.minimum(found, tl.min(tl.where(crossed, col, V), axis=0))
                last_positive = tl.maximum(last_positive, tl.max(tl.where(positive, col, -1), axis=0))
                prefix += tl.sum(p, axis=0)
            start += BLOCK_V
            if not WRITE_LOGPROBS:
                start = tl.where(found < V, V, start)  # token found: the rest of the row is not needed
        if SAMPLE:
            token = tl.where(found < V, found, last_positive)
    tl.store(tokens_ptr + row, token.to(tl.int64))

    # Log-prob of the chosen token, computed exactly as its entry of the log-prob row.
    x_tok = tl.load(row_ptrs[:, None] + token + tl.arange(0, 1)[None, :]).to(tl.float32)
    scaled_tok = tl.sum(_scaled_mixed_score(x_tok, m, log_z, coef, temperature, SAMPLE), axis=0)
    tl.store(token_lp_ptr + row, (scaled_tok - big_m) - log_big_z)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_v(vocab_size: int) -> int:
    # On a GPU a 2 x 2048 tile keeps 16 loads per thread in flight at 8 warps while the
    # per-insertion reductions stay short. The interpreter pays per operation, not per
    # element, so there one block covers rows of up to 8192 columns.
    return min(triton.next_power_of_2(vocab_size), 8192 if _interpreted() else 2048)


def fused_step_triton(base_logits: torch.Tensor, reward_logits: torch.Tensor, embed: Optional[torch.Tensor],
                      w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                      b2: Optional[torch.Tensor], alpha_max: float, k: int, vocab_size: int, temperature: float,
                      uniform: Optional[torch.Tensor], alpha_override: Optional[float], return_logprobs: bool,
                      *, block_v: Optional[int] = None):
    """One TARo step in one kernel launch; the arguments of ``torch.ops.taro_ext.fused_step_triton``.

    Inputs are validated by ``taro_step``/``genarm_step``; here only what the kernel itself
    relies on is checked. ``block_v`` (a power of two) overrides the column block size.
    Returns ``(tokens int64 [B], alpha fp32 [B], token_logprobs fp32 [B], logprobs fp32 [B, V] or [B, 0])``.
    """
    if base_logits.dtype != reward_logits.dtype:
        raise TypeError(f"base_logits and reward_logits must share a dtype, got {base_logits.dtype} "
                        f"and {reward_logits.dtype}")
    if base_logits.stride(1) != 1 or reward_logits.stride(1) != 1:
        raise ValueError("base_logits and reward_logits rows must be contiguous in the last dim")
    use_router = alpha_override is None
    if use_router and any(w is None for w in (embed, w1, b1, w2, b2)):
        raise ValueError("embed, w1, b1, w2 and b2 are required unless alpha_override is given")
    sample = temperature > 0
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k must lie in [1, vocab_size={vocab_size}], got {k}")
    if sample and uniform is None:
        raise ValueError("uniform is required when temperature > 0")
    batch, device = base_logits.shape[0], base_logits.device
    block = _block_v(vocab_size) if block_v is None else block_v
    if block < 1 or block & (block - 1):
        raise ValueError(f"block_v must be a power of two, got {block}")

    tokens = torch.empty(batch, dtype=torch.int64, device=device)
    alpha = torch.empty(batch, dtype=torch.float32, device=device)
    token_logprobs = torch.empty(batch, dtype=torch.float32, device=device)
    logprobs = torch.empty(batch, vocab_size if return_logprobs else 0, dtype=torch.float32, device=device)

    if use_router:
        hidden, d = w1.shape[0], embed.shape[1]
        k_pad, d_pad, h_pad = (triton.next_power_of_2(n) for n in (k, d, hidden))
        h_block = min(h_pad, max(1, _MLP_TILE_ELEMENTS // (2 * k_pad * d_pad)))
        router_args = (embed, embed.stride(0), embed.stride(1), w1, w1.stride(0), w1.stride(1), b1, w2, b2,
                       float(alpha_max))
    else:
        # Unused pointers (USE_ROUTER=False compiles them out); K and friends fixed at 1.
        hidden = d = k = k_pad = d_pad = h_pad = h_block = 1
        router_args = (base_logits, 0, 0, base_logits, 0, 0, base_logits, base_logits, base_logits, 0.0)
    _taro_step_kernel[(batch,)](
        base_logits, reward_logits, base_logits.stride(0), reward_logits.stride(0), vocab_size,
        *router_args,
        0.0 if alpha_override is None else float(alpha_override), float(temperature),
        uniform if sample else alpha,
        tokens, alpha, token_logprobs, logprobs, max(logprobs.stride(0), 1),
        K=k, K_PAD=k_pad, D=d, D_PAD=d_pad, H=hidden, H_PAD=h_pad, H_BLOCK=h_block,
        BLOCK_V=block, USE_ROUTER=use_router, SAMPLE=sample, WRITE_LOGPROBS=return_logprobs,
        num_warps=8,
    )
    return tokens, alpha, token_logprobs, logprobs
