"""The fused TARo decode step as one Triton kernel launch (../shared/TARO_SPEC.md).

Rows are split across programs inside the one launch: program ``(row, slice)`` of a
``[B * S]`` grid reads columns ``[slice * CHUNK, (slice + 1) * CHUNK)`` of both logits rows
(separate base and reward loads: vector loads, no select between two pointers), in blocks
of ``BLOCK_V`` columns with ``tl.range(..., num_stages=3)`` so the loads of later blocks are
in flight while a block is processed. Each program writes its partials to a small
workspace, then takes a ticket from the row's counter (an acq_rel atomic); the program
that draws the last ticket (last-program-done, no waiting, so any grid size is safe and
the interpreter, which runs programs one after another, runs it too) merges the partials,
finishes the row and resets the counter to 0 for the next step.

With the router (TARo):

1. Per slice: online max and sum-exp of each model (rescaled when the max grows), the
   entropy term ``t = sum exp(x - m) * (x - m)`` rescaled the same way (``H = log z - t / z``),
   and a running top-K per model (threshold insertion, below).
2. Last program: merge of the S partials (the S sorted-by-nothing top-K lists are one
   ``[S * K]`` tile; best-first insertion takes exactly K steps); router: keys unpacked to
   (log-prob, id), floored at -100, ranked by counting larger keys (cheaper than a sort
   for router-sized K), each feature meeting the W1 column of its rank;
   ``alpha_max * sigmoid(w2 . silu(W1 x + b1) + b2)`` in chunks of ``H_BLOCK`` hidden units.
3. Last program: a pass over the row (from L2 on a GPU) for the normaliser of ``s / T``
   (``s`` for greedy), ``s = (x_b - m_b) + alpha * (x_r - m_r)`` (the spec's ``lp_b + alpha * lp_r``
   up to a per-row constant, rounded on the grid of the top scores; reward term 0 when alpha == 0), and
   the running argmax (lowest id on ties); then, for sampling or log-probs, the scan
   pass: per block ``tl.cumsum`` of ``p = exp(s / T - M)`` on top of the running prefix;
   the token is the smallest id with ``p > 0`` whose inclusive prefix sum exceeds
   ``u * Z`` (requiring ``p > 0`` keeps a non-monotonic parallel float scan from ever
   returning a zero-probability token), else the last id with ``p > 0``. Without
   log-probs the scan stops at the block where the token is found.

GenARM (``alpha_override``): ``s = z_b + alpha * z_r`` differs from ``lp_b + alpha * lp_r``
by a per-row constant that the argmax, the CDF and ``log_softmax(s / T)`` do not see, so
no per-model normaliser, entropy or top-K is needed: each slice computes the online max,
sum-exp and argmax of ``s / T`` in its one read, and the last program merges them. Greedy
reads each row once. Sampling rescans only the slice whose CDF range holds ``u * Z``.
Log-probs, when asked, are written by the last program in one more pass over the row.
But fp32 rounds ``s / T`` on the grid of its magnitude, and the reference's top scores are
small: the raw sum (one FMA, then the scale) is within 1.5 units of the last place, 4.6e-5
at ``|s / T| <= 256`` (``_RAW_SCORE_LIMIT``). A row whose max is larger (logits near 1e4, a
low T) is done again by the last program relative to its maxima, as TARo's step 3.

Top-K: each value is packed with its id into one int64, ``(ordered_bits(x) << 32) |
(0x7FFFFFFF - id)``, where ``ordered_bits`` is the order-preserving integer image of the
fp32 value (-0.0 folded into +0.0): integer order is then "larger value first, lower id
on ties", the spec's order. Ranking the raw logits equals ranking the log-probs
(log_softmax shifts a row by one constant). Blocks are merged into the running list by
threshold insertion rather than ``tl.topk``: only elements above the current K-th best
are candidates (after the first blocks almost none on real logits) and they are
inserted largest first, each replacing the current minimum; a block with no candidate
costs one compare. Ranking by logit differs from the reference's ranking by log-prob
only where two different fp32 logits round to the same log-prob; the lower id then goes
first in the reference, the larger logit here.

What still runs on one program per row: the router, the normaliser pass of TARo and the
log-prob rows (they need the merged statistics, and a program cannot wait for others in
the interpreter, nor safely on a GPU whose grid is not co-resident). The CUDA backend
splits those too (cooperative grid sync).
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
# The last program merges the S top-K lists as one [S * K_PAD] tile: at most this many keys.
_MERGE_TILE_KEYS = 8192
# Partials per (row, slice): TARo (m, z, t) per model; GenARM (m, z, argmax) of s / T.
_STATS = 6
# GenARM's raw scores are used where their row max is at most this in magnitude (module doc).
_RAW_SCORE_LIMIT = tl.constexpr(256.0)


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
def _online_add(x, m, z, t, WITH_T: tl.constexpr):
    """Adds a block x (masked entries -inf) to the online (max m, sum exp z, entropy term t)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # exp(-inf - -inf) is NaN: a state that has seen only -inf so far has z = t = 0, and
    # any finite shift rescales those zeros correctly.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
    rescale = tl.exp(shift)
    shifted = x - m_safe
    e = tl.exp(shifted)
    if WITH_T:
        # Entropy term relative to the new max: sum e' (x - m') = r (t + z (m - m')).
        t = rescale * (t + z * shift) + tl.sum(e * tl.where(e > 0.0, shifted, 0.0), axis=0)
    z = z * rescale + tl.sum(e, axis=0)
    return m_new, z, t


@triton.jit
def _merge_online(m_j, z_j, t_j, WITH_T: tl.constexpr):
    """Merges per-slice online states (vectors over slices; empty slices have z = 0)."""
    m = tl.max(m_j, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    live = z_j > 0.0
    diff = tl.where(live, m_j - m_safe, 0.0)
    scale = tl.where(live, tl.exp(diff), 0.0)
    z = tl.sum(z_j * scale, axis=0)
    t = 0.0
    if WITH_T:
        t = tl.sum(tl.where(live, scale * (t_j + z_j * diff), 0.0), axis=0)
    return m, z, t


@triton.jit
def _topk_insert(key, top, kth):
    """Inserts the keys of a block above the current K-th best `kth`, largest first."""
    cand = tl.where(key > kth, key, _KEY_MASKED)
    best = tl.max(cand, axis=0)
    while best > kth:
        top = tl.where(top == kth, best, top)  # live slots are distinct: exactly one matches
        cand = tl.where(cand == best, _KEY_MASKED, cand)
        kth = tl.min(top, axis=0)
        best = tl.max(cand, axis=0)
    return top, kth


@triton.jit
def _list_features(top, m, log_z, embed_ptr, stride_e0, stride_e1, K: tl.constexpr, K_PAD: tl.constexpr,
                   D: tl.constexpr, D_PAD: tl.constexpr):
    """A top-K list's router features: ranks, floored log-probs [K_PAD] and embeddings [K_PAD, D_PAD]."""
    slot = tl.arange(0, K_PAD)
    live = slot < K
    # A live slot's place in its list is the number of live keys above it; W1 columns are
    # addressed by that rank, so the list is never physically sorted.
    above = (top[None, :] > top[:, None]) & live[None, :]
    rank = tl.sum(above.to(tl.int32), axis=1)
    top_x, top_ids = _unpack_key(top)
    value = tl.where(live, tl.maximum((top_x - m) - log_z, -100.0), 0.0)
    dcol = tl.arange(0, D_PAD)
    emb_mask = live[:, None] & (dcol < D)[None, :]
    emb = tl.load(embed_ptr + top_ids[:, None].to(tl.int64) * stride_e0 + dcol[None, :] * stride_e1,
                  mask=emb_mask, other=0.0).to(tl.float32)
    return rank, value, emb, emb_mask


@triton.jit
def _list_hidden(w_row, hmask, stride_w1, rank, value, emb, emb_mask, col_v0, col_emb0,
                 K: tl.constexpr, K_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                 H_BLOCK: tl.constexpr):
    """One list's share of W1 x for a chunk of hidden units: [H_BLOCK]."""
    live = tl.arange(0, K_PAD) < K
    w_v = tl.load(w_row[:, None] + (col_v0 + rank)[None, :] * stride_w1, mask=hmask[:, None] & live[None, :],
                  other=0.0)
    acc = tl.sum(w_v * value[None, :], axis=1)
    col_emb = col_emb0 + rank[:, None] * D + tl.arange(0, D_PAD)[None, :]
    w_emb = tl.load(w_row[:, None, None] + col_emb[None, :, :] * stride_w1,
                    mask=hmask[:, None, None] & emb_mask[None, :, :], other=0.0)
    return acc + tl.sum(tl.reshape(w_emb * emb[None, :, :], [H_BLOCK, K_PAD * D_PAD]), axis=1)


@triton.jit
def _mixed_score(xb, xr, c_b, c_r, alpha, temperature, SAMPLE: tl.constexpr):
    """``s / T`` (``s`` for greedy) with ``s = (x_b - c_b) + alpha * (x_r - c_r)`` (one FMA): the spec's
    ``lp_b + alpha * lp_r`` up to a per-row constant for any row constants ``c`` (the row maxima, or
    0 for GenARM's raw scores); a zero alpha contributes 0, never 0 * -inf."""
    r = tl.where(alpha == 0.0, 0.0, xr - c_r)
    s = tl.fma(alpha + tl.zeros_like(r), r, xb - c_b)
    if SAMPLE:
        s = s / temperature
    return s


@triton.jit
def _row_maxima(base_row, reward_row, V, alpha, BLOCK_V: tl.constexpr):
    """The largest logit of each model's row (0 where none is finite, and for the reward model
    at alpha 0): GenARM's offsets when its raw scores are too large."""
    offs = tl.arange(0, BLOCK_V)
    mb = tl.full([BLOCK_V], float("-inf"), tl.float32)
    mr = tl.full([BLOCK_V], float("-inf"), tl.float32)
    for start in tl.range(0, V, BLOCK_V, num_stages=3):
        xb, xr = _load_pair(base_row, reward_row, start + offs, V)
        mb = tl.maximum(mb, xb)
        mr = tl.maximum(mr, xr)
    m_b = tl.max(mb, axis=0)
    m_r = tl.max(mr, axis=0)
    return tl.where(m_b == float("-inf"), 0.0, m_b), tl.where((m_r == float("-inf")) | (alpha == 0.0), 0.0, m_r)


@triton.jit
def _score_stats(base_row, reward_row, lo, hi, c_b, c_r, alpha, temperature, SAMPLE: tl.constexpr,
                 BLOCK_V: tl.constexpr):
    """One pass over columns [lo, hi) of a row: online max and sum exp of ``s / T`` and its argmax
    (lowest id on ties)."""
    offs = tl.arange(0, BLOCK_V)
    big_m = float("-inf")
    big_z = 0.0
    argmax = 0
    for start in tl.range(lo, hi, BLOCK_V, num_stages=3):
        col = start + offs
        xb, xr = _load_pair(base_row, reward_row, col, hi)
        scaled = _mixed_score(xb, xr, c_b, c_r, alpha, temperature, SAMPLE)
        blk_max, blk_arg = tl.max(scaled, axis=0, return_indices=True, return_indices_tie_break_left=True)
        argmax = tl.where(blk_max > big_m, start + blk_arg, argmax)  # strict: earlier ids win ties
        big_m, big_z, _unused = _online_add(scaled, big_m, big_z, 0.0, False)
    return big_m, big_z, argmax


@triton.jit
def _load_pair(base_row, reward_row, col, limit):
    inside = col < limit
    xb = tl.load(base_row + col, mask=inside, other=float("-inf")).to(tl.float32)
    xr = tl.load(reward_row + col, mask=inside, other=float("-inf")).to(tl.float32)
    return xb, xr


@triton.jit
def _taro_step_kernel(
    base_ptr, reward_ptr, stride_base, stride_reward, V, CHUNK, S,
    embed_ptr, stride_e0, stride_e1, w1_ptr, stride_w0, stride_w1, b1_ptr, w2_ptr, b2_ptr, alpha_max,
    alpha_override, temperature, uniform_ptr,
    stats_ptr, keys_ptr, counter_ptr,
    tokens_ptr, alpha_ptr, token_lp_ptr, logprobs_ptr, stride_lp,
    K: tl.constexpr, K_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    H: tl.constexpr, H_PAD: tl.constexpr, H_BLOCK: tl.constexpr, S_PAD: tl.constexpr,
    BLOCK_V: tl.constexpr, USE_ROUTER: tl.constexpr, SAMPLE: tl.constexpr, WRITE_LOGPROBS: tl.constexpr,
):
    pid = tl.program_id(0)
    row = (pid // S).to(tl.int64)
    part = pid % S
    base_row = base_ptr + row * stride_base
    reward_row = reward_ptr + row * stride_reward
    offs = tl.arange(0, BLOCK_V)
    c0 = part * CHUNK
    c1 = tl.minimum(c0 + CHUNK, V)
    stats = stats_ptr + (row * S + part) * 6
    slot = tl.arange(0, K_PAD)

    # ---- per slice: partials of this program's columns ---------------------------------
    if USE_ROUTER:
        m_b = float("-inf")
        z_b = 0.0
        t_b = 0.0
        m_r = float("-inf")
        z_r = 0.0
        t_r = 0.0
        # Distinct sentinels below every real key fill the K live slots (insertion replaces
        # exactly one slot, the one equal to the minimum); padding slots sit at +max so the
        # minimum, i.e. the K-th best, only looks at live slots.
        top_b = tl.where(slot < K, _KEY_MASKED + 1 + slot.to(tl.int64), 2**63 - 1)
        top_r = top_b
        kth_b = tl.min(top_b, axis=0)
        kth_r = kth_b
        for start in tl.range(c0, c1, BLOCK_V, num_stages=3):
            col = start + offs
            xb, xr = _load_pair(base_row, reward_row, col, c1)
            m_b, z_b, t_b = _online_add(xb, m_b, z_b, t_b, True)
            m_r, z_r, t_r = _online_add(xr, m_r, z_r, t_r, True)
            inside = col < c1
            top_b, kth_b = _topk_insert(tl.where(inside, _ordered_key(xb, col), _KEY_MASKED), top_b, kth_b)
            top_r, kth_r = _topk_insert(tl.where(inside, _ordered_key(xr, col), _KEY_MASKED), top_r, kth_r)
        tl.store(stats + 0, m_b)
        tl.store(stats + 1, z_b)
        tl.store(stats + 2, t_b)
        tl.store(stats + 3, m_r)
        tl.store(stats + 4, z_r)
        tl.store(stats + 5, t_r)
        # Unfilled slots (a slice shorter than K) go out as masked keys, below every real one.
        keys = keys_ptr + (row * S + part) * (2 * K_PAD)
        tl.store(keys + slot, tl.where(top_b > _KEY_MASKED + K_PAD, top_b, _KEY_MASKED), mask=slot < K)
        tl.store(keys + K_PAD + slot, tl.where(top_r > _KEY_MASKED + K_PAD, top_r, _KEY_MASKED), mask=slot < K)
    else:
        s_m, s_z, s_arg = _score_stats(base_row, reward_row, c0, c1, 0.0, 0.0, alpha_override, temperature,
                                       SAMPLE, BLOCK_V)
        tl.store(stats + 0, s_m)
        tl.store(stats + 1, s_z)
        tl.store(stats + 2, s_arg.to(tl.float32))  # exact: V < 2**24 (checked by the launcher)

    # ---- last program of the row: merge and finish -------------------------------------
    tl.debug_barrier()  # every thread's partials are stored before the release below
    ticket = tl.atomic_add(counter_ptr + row, 1, sem="acq_rel", scope="gpu")
    if ticket == S - 1:
        tl.store(counter_ptr + row, 0)  # every program of this row has taken its ticket
        j = tl.arange(0, S_PAD)
        jm = j < S
        row_stats = stats_ptr + row * S * 6 + j * 6
        token = 0
        if USE_ROUTER:
            m_b, z_b, t_b = _merge_online(
                tl.load(row_stats + 0, mask=jm, other=float("-inf"), cache_modifier=".cg"),
                tl.load(row_stats + 1, mask=jm, other=0.0, cache_modifier=".cg"),
                tl.load(row_stats + 2, mask=jm, other=0.0, cache_modifier=".cg"), True)
            m_r, z_r, t_r = _merge_online(
                tl.load(row_stats + 3, mask=jm, other=float("-inf"), cache_modifier=".cg"),
                tl.load(row_stats + 4, mask=jm, other=0.0, cache_modifier=".cg"),
                tl.load(row_stats + 5, mask=jm, other=0.0, cache_modifier=".cg"), True)
            log_zb = tl.log(z_b)
            log_zr = tl.log(z_r)
            # Merge the S lists: one tile, best-first insertion, exactly K steps per model.
            e = tl.arange(0, S_PAD * K_PAD)
            at = keys_ptr + row * S * (2 * K_PAD) + (e // K_PAD) * (2 * K_PAD) + e % K_PAD
            em = (e // K_PAD < S) & (e % K_PAD < K)
            init = tl.where(slot < K, _KEY_MASKED + 1 + slot.to(tl.int64), 2**63 - 1)
            kth0 = tl.min(init, axis=0)
            top_b, kth_b = _topk_insert(tl.load(at, mask=em, other=_KEY_MASKED, cache_modifier=".cg"), init, kth0)
            top_r, kth_r = _topk_insert(tl.load(at + K_PAD, mask=em, other=_KEY_MASKED, cache_modifier=".cg"),
                                        init, kth0)

            # Router: x = [v_b (K), v_r (K), H_b, H_r, E[i_b] (K*D), E[i_r] (K*D)].
            rank_b, val_b, emb_b, emask_b = _list_features(top_b, m_b, log_zb, embed_ptr, stride_e0, stride_e1,
                                                           K, K_PAD, D, D_PAD)
            rank_r, val_r, emb_r, emask_r = _list_features(top_r, m_r, log_zr, embed_ptr, stride_e0, stride_e1,
                                                           K, K_PAD, D, D_PAD)
            ent_b = log_zb - t_b / z_b
            ent_r = log_zr - t_r / z_r
            u = tl.load(b2_ptr).to(tl.float32)
            for h0 in range(0, H_PAD, H_BLOCK):
                hid = h0 + tl.arange(0, H_BLOCK)
                hmask = hid < H
                w_row = w1_ptr + hid.to(tl.int64) * stride_w0
                acc = _list_hidden(w_row, hmask, stride_w1, rank_b, val_b, emb_b, emask_b, 0, 2 * K + 2,
                                   K, K_PAD, D, D_PAD, H_BLOCK)
                acc += _list_hidden(w_row, hmask, stride_w1, rank_r, val_r, emb_r, emask_r, K, 2 * K + 2 + K * D,
                                    K, K_PAD, D, D_PAD, H_BLOCK)
                acc += tl.load(w_row + (2 * K) * stride_w1, mask=hmask, other=0.0) * ent_b
                acc += tl.load(w_row + (2 * K + 1) * stride_w1, mask=hmask, other=0.0) * ent_r
                acc += tl.load(b1_ptr + hid, mask=hmask, other=0.0)
                hidden = acc * tl.sigmoid(acc)
                u += tl.sum(tl.where(hmask, hidden * tl.load(w2_ptr + hid, mask=hmask, other=0.0), 0.0), axis=0)
            alpha = alpha_max * tl.sigmoid(u)
            # The mix is relative to the row maxima, not the log-normalisers: s / T then rounds on
            # the grid of the top scores' own small magnitude (-log V at a flat row: 2e-3 at T = 1e-3).
            c_b = tl.where(m_b == float("-inf"), 0.0, m_b)
            c_r = tl.where(m_r == float("-inf"), 0.0, m_r)

            # Normaliser of s / T over the row, and the greedy argmax.
            big_m, big_z, token = _score_stats(base_row, reward_row, 0, V, c_b, c_r, alpha, temperature,
                                               SAMPLE, BLOCK_V)
            log_big_z = tl.log(big_z)
            scan_lo = 0
            scan_hi = V
            prefix = 0.0
        else:
            alpha = alpha_override + tl.zeros([], tl.float32)
            c_b = tl.zeros([], tl.float32)
            c_r = tl.zeros([], tl.float32)
            m_j = tl.load(row_stats + 0, mask=jm, other=float("-inf"), cache_modifier=".cg")
            z_j = tl.load(row_stats + 1, mask=jm, other=0.0, cache_modifier=".cg")
            arg_j = tl.load(row_stats + 2, mask=jm, other=0.0, cache_modifier=".cg").to(tl.int32)
            big_m, big_z, _unused = _merge_online(m_j, z_j, 0.0, False)
            # Slices are in id order: the argmax is the first slice's argmax among those
            # reaching the row max (a slice of only -inf has m = -inf and never wins).
            token = tl.min(tl.where(jm & (m_j == big_m), arg_j, V), axis=0)
            token = tl.where(token < V, token, 0)
            scan_lo = tl.zeros([], tl.int32)
            scan_hi = tl.zeros([], tl.int32) + V
            prefix = tl.zeros([], tl.float32)
            rescore = (tl.abs(big_m) > _RAW_SCORE_LIMIT) & (big_m != float("-inf"))
            if rescore:  # the raw scores are too coarse (module doc): again, relative to the maxima
                c_b, c_r = _row_maxima(base_row, reward_row, V, alpha, BLOCK_V)
                big_m, big_z, token = _score_stats(base_row, reward_row, 0, V, c_b, c_r, alpha, temperature,
                                                   SAMPLE, BLOCK_V)
            log_big_z = tl.log(big_z)
            if SAMPLE:
                if ~rescore:
                    # The slice whose CDF range holds u * Z: the first with weight > 0 whose inclusive
                    # prefix exceeds it, else the last with weight > 0; only that slice is rescanned.
                    m_safe = tl.where(big_m == float("-inf"), 0.0, big_m)
                    weight = tl.where(jm & (z_j > 0.0), z_j * tl.exp(m_j - m_safe), 0.0)
                    big_z = tl.sum(weight, axis=0)  # the same sum the crossing search uses
                    log_big_z = tl.log(big_z)
                    cum = tl.cumsum(weight, axis=0)
                    threshold_s = tl.load(uniform_ptr + row) * big_z
                    hit = tl.min(tl.where((weight > 0.0) & (cum > threshold_s), j, S_PAD), axis=0)
                    last = tl.max(tl.where(weight > 0.0, j, -1), axis=0)
                    crossing = tl.where(hit < S_PAD, hit, tl.maximum(last, 0))
                    if not WRITE_LOGPROBS:
                        prefix = tl.sum(tl.where(j < crossing, weight, 0.0), axis=0)
                        scan_lo = crossing * CHUNK
                        scan_hi = tl.minimum(scan_lo + CHUNK, V)
                        token = scan_lo  # replaced by the scan below
        tl.store(alpha_ptr + row, alpha)

        # Inverse-CDF scan and/or log-prob rows over [scan_lo, scan_hi).
        if SAMPLE or WRITE_LOGPROBS:
            threshold = 0.0
            if SAMPLE:
                threshold = tl.load(uniform_ptr + row) * big_z
            found = V  # V: not crossed yet
            last_positive = -1
            start = scan_lo
            while start < scan_hi:
                col = start + offs
                inside = col < scan_hi
                xb, xr = _load_pair(base_row, reward_row, col, scan_hi)
                scaled = _mixed_score(xb, xr, c_b, c_r, alpha, temperature, SAMPLE)
                if WRITE_LOGPROBS:
                    tl.store(logprobs_ptr + row * stride_lp + col, (scaled - big_m) - log_big_z, mask=inside)
                if SAMPLE:
                    p = tl.exp(scaled - big_m)
                    positive = p > 0.0
                    crossed = positive & (prefix + tl.cumsum(p, axis=0) > threshold)
                    found = tl.minimum(found, tl.min(tl.where(crossed, col, V), axis=0))
                    last_positive = tl.maximum(last_positive, tl.max(tl.where(positive, col, -1), axis=0))
                    prefix += tl.sum(p, axis=0)
                start += BLOCK_V
                if not WRITE_LOGPROBS:
                    start = tl.where(found < V, scan_hi, start)  # token found: the rest is not needed
            if SAMPLE:
                token = tl.where(found < V, found, tl.maximum(last_positive, 0))
        tl.store(tokens_ptr + row, token.to(tl.int64))

        # Log-prob of the chosen token, computed exactly as its entry of the log-prob row.
        one = tl.arange(0, 1)
        xb_tok = tl.load(base_row + token + one).to(tl.float32)
        xr_tok = tl.load(reward_row + token + one).to(tl.float32)
        scaled_tok = tl.sum(_mixed_score(xb_tok, xr_tok, c_b, c_r, alpha, temperature, SAMPLE), axis=0)
        tl.store(token_lp_ptr + row, (scaled_tok - big_m) - log_big_z)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_v(vocab_size: int) -> int:
    # On a GPU a 2048-column block per model keeps 8 values per thread and model in flight
    # per stage at 8 warps while the per-insertion reductions stay short. The interpreter
    # pays per operation, not per element: there one block covers up to 2048 columns too,
    # and rows of a few thousand columns still split across two programs.
    return min(triton.next_power_of_2(vocab_size), 2048)


def _slices(batch: int, vocab_size: int, block: int, k_pad: int, device: torch.device) -> int:
    """Programs per row: enough for about two programs per SM in all (one per row at large B)."""
    blocks = triton.cdiv(vocab_size, block)
    if _interpreted() or device.type != "cuda":
        target = 2
    else:
        target = triton.cdiv(2 * torch.cuda.get_device_properties(device).multi_processor_count, max(batch, 1))
    return max(1, min(blocks, target, _MERGE_TILE_KEYS // k_pad))


# One zeroed counter per row, per (device, stream): the last program of a row resets its
# counter, so after every step they are all 0 again and no per-step memset is needed.
# Per stream, so that steps on two streams at once never share counters.
_COUNTERS: dict = {}


def _row_counters(batch: int, device: torch.device) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < batch:
        buf = torch.zeros(max(1024, triton.next_power_of_2(batch)), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def fused_step_triton(base_logits: torch.Tensor, reward_logits: torch.Tensor, embed: Optional[torch.Tensor],
                      w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor],
                      b2: Optional[torch.Tensor], alpha_max: float, k: int, vocab_size: int, temperature: float,
                      uniform: Optional[torch.Tensor], alpha_override: Optional[float], return_logprobs: bool,
                      *, block_v: Optional[int] = None, slices: Optional[int] = None):
    """One TARo step in one kernel launch; the arguments of ``torch.ops.taro_ext.fused_step_triton``.

    Inputs are validated by ``taro_step``/``genarm_step``; here only what the kernel itself
    relies on is checked. ``block_v`` (a power of two) overrides the column block size and
    ``slices`` the programs per row (clamped to the number of blocks of a row).
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
    if vocab_size >= 2**24:
        raise ValueError(f"vocab_size must be < 2**24 for the triton backend, got {vocab_size}")
    if sample and uniform is None:
        raise ValueError("uniform is required when temperature > 0")
    batch, device = base_logits.shape[0], base_logits.device
    block = _block_v(vocab_size) if block_v is None else block_v
    if block < 1 or block & (block - 1):
        raise ValueError(f"block_v must be a power of two, got {block}")
    if slices is not None and slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")

    tokens = torch.empty(batch, dtype=torch.int64, device=device)
    alpha = torch.empty(batch, dtype=torch.float32, device=device)
    token_logprobs = torch.empty(batch, dtype=torch.float32, device=device)
    logprobs = torch.empty(batch, vocab_size if return_logprobs else 0, dtype=torch.float32, device=device)
    if batch == 0:
        return tokens, alpha, token_logprobs, logprobs

    if use_router:
        hidden, d = w1.shape[0], embed.shape[1]
        k_pad, d_pad, h_pad = (triton.next_power_of_2(n) for n in (k, d, hidden))
        h_block = min(h_pad, max(1, _MLP_TILE_ELEMENTS // (k_pad * d_pad)))
        router_args = (embed, embed.stride(0), embed.stride(1), w1, w1.stride(0), w1.stride(1), b1, w2, b2,
                       float(alpha_max))
    else:
        # Unused pointers (USE_ROUTER=False compiles them out); K and friends fixed at 1.
        hidden = d = k = k_pad = d_pad = h_pad = h_block = 1
        router_args = (base_logits, 0, 0, base_logits, 0, 0, base_logits, base_logits, base_logits, 0.0)
    blocks = triton.cdiv(vocab_size, block)
    per_row = _slices(batch, vocab_size, block, k_pad, device) if slices is None else slices
    per_row = max(1, min(per_row, blocks, _MERGE_TILE_KEYS // k_pad))
    chunk = triton.cdiv(blocks, per_row) * block  # columns per program, whole blocks
    per_row = triton.cdiv(vocab_size, chunk)
    stats = torch.empty(batch * per_row * _STATS, dtype=torch.float32, device=device)
    keys = torch.empty(batch * per_row * 2 * k_pad if use_router else 1, dtype=torch.int64, device=device)
    _taro_step_kernel[(batch * per_row,)](
        base_logits, reward_logits, base_logits.stride(0), reward_logits.stride(0), vocab_size, chunk, per_row,
        *router_args,
        0.0 if alpha_override is None else float(alpha_override), float(temperature),
        uniform if sample else alpha,
        stats, keys, _row_counters(batch, device),
        tokens, alpha, token_logprobs, logprobs, max(logprobs.stride(0), 1),
        K=k, K_PAD=k_pad, D=d, D_PAD=d_pad, H=hidden, H_PAD=h_pad, H_BLOCK=h_block,
        S_PAD=triton.next_power_of_2(per_row),
        BLOCK_V=block, USE_ROUTER=use_router, SAMPLE=sample, WRITE_LOGPROBS=return_logprobs,
        num_warps=8,
    )
    return tokens, alpha, token_logprobs, logprobs
