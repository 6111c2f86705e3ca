// The fused TARo step kernel (../shared/TARO_SPEC.md): one cooperative launch.
// Instantiated per logits dtype in taro_step_cuda_{f32,bf16,f16}.cu; the host side is
// taro_step_cuda.cu.
//
// Launch shape. Each logits row is cut into S slices of 16-byte slots; the grid is
// min(B * S, resident CTAs) CTAs of 256 threads, launched cooperatively so that every
// CTA is resident and cooperative_groups' grid.sync() can separate the phases (no -rdc
// needed since CUDA 11; the barrier state is the driver's, so the workspace needs no
// zeroing and no counters). CTAs loop over (row, slice) items, so any B works.
// S = min(resident / B, slots / 64) clamped to [1, 1024]: a small batch is spread over
// the whole GPU, a large one gets S = 1.
//
// Phases (grid.sync between them):
//  1. per (row, slice), router only: online (max, sum exp, entropy term) of both rows and
//     the slice's top-K of both rows (a raw-value filter seeded from the first tile's
//     per-thread maxima, then a shared-memory merge) -> workspace. Meanwhile the grid
//     prefetches the router weights into L2.
//  2. per row, router only: merge the S partials -> row maxima (the mix's offsets, stored for
//     phases 3-4), log-normalisers, entropies and both top-K lists (filtered from below by the
//     K-th largest slice maximum); index-embedding gather and router MLP -> alpha.
//  3. per (row, slice): slice partials of the mixed score z = s / T (or s): max,
//     sum exp(z - max), argmax (lowest id). GenARM (alpha_override) starts here: its
//     s = z_b + alpha * z_r needs no normaliser (a per-row constant), so it reads each row
//     once and has a single grid.sync.
//  4. per (row, slice): merge the S score partials -> (M, total); the slice-0 CTA writes
//     the greedy token; for sampling, every CTA finds the slice whose CDF range holds
//     u * total (a warp scan over the slice weights, bit-identical in every CTA) and that
//     one CTA scans its slice; with logprobs every CTA writes its slice of z - log-sum-exp
//     (16-byte stores where aligned).
// Every value a CTA reads from another CTA crosses a grid.sync and is read with
// ld.global.cg; nothing is accumulated across CTAs with atomics, so the step is
// deterministic run to run (and a CUDA-graph replay gives the eager tokens).
#pragma once

#include <cooperative_groups.h>

#include "../taro_step.h"
#include "block_primitives.cuh"
#include "taro_step_cuda.h"

namespace taro {
namespace cuda_detail {

namespace cg = cooperative_groups;

constexpr int kMinSlotsPerSlice = 64;
constexpr int kMaxSlices = 1024;  // <= kCandidates: phase 2's early exit needs tiles >= S entries
static_assert(kMaxSlices <= kCandidates, "a phase-2 tile must cover every slice list once");
static_assert(kCudaMaxRouterInputs * sizeof(float) <= 2 * kCandidates * sizeof(uint64_t),
              "router features reuse the candidate buffers");

// ---------------------------------------------------------------- workspace

struct WorkspaceLayout {
  size_t keys = 0, stats = 0, scores = 0, row_max = 0, bytes = 0;
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

// keys:    [B*S][2][KB] uint64 top-K keys per slice and model (router only)
// stats:   [B*S][2] float4 (m, d, t, -) entropy partials per slice and model (router only)
// scores:  [B*S] float4 (m, d, best, best_id bits) mixed-score partials per slice
// row_max: [B] float2 row maxima, MixedScore's offsets (router only: written in phase 2, read in phases 3-4)
__host__ __device__ inline WorkspaceLayout workspace_layout(int64_t batch, int slices, int kb, bool router) {
  WorkspaceLayout l;
  const size_t items = size_t(batch) * size_t(slices);
  l.keys = 0;
  l.stats = align16(l.keys + (router ? items * 2 * size_t(kb) * sizeof(uint64_t) : 0));
  l.scores = align16(l.stats + (router ? items * 2 * sizeof(float4) : 0));
  l.row_max = align16(l.scores + items * sizeof(float4));
  l.bytes = align16(l.row_max + (router ? size_t(batch) * sizeof(float2) : 0));
  return l;
}

struct Workspace {
  uint64_t* keys;
  float4* stats;
  float4* scores;
  float2* row_max;
};

// Workspace values are written by other CTAs before a grid.sync: read them through L2
// (ld.global.cg), never through the non-coherent read-only path.
__device__ __forceinline__ uint64_t load_cg(const uint64_t* p) {
  return __ldcg(reinterpret_cast<const unsigned long long*>(p));
}

// ---------------------------------------------------------------- shared memory

template <int KB>
struct SharedStorage {
  union alignas(16) {
    uint64_t cand[2][kCandidates];              // phases 1-2: top-K candidates per model
    float features[kCudaMaxRouterInputs];       // phase 2: router input x
    float slice_weight[kMaxSlices];             // phase 4: sum of p per slice
  } u;
  TopKShared<KB> topk;
  alignas(16) unsigned char scratch[kWarps * 32];  // block_reduce / scan scratch
  float bcast_f[3];
  int bcast_i[1];
};

template <typename T, int KB>
__device__ __forceinline__ T* scratch_as(SharedStorage<KB>& sh) {
  static_assert(sizeof(T) <= 32, "scratch holds kWarps values of at most 32 bytes");
  return reinterpret_cast<T*>(sh.scratch);
}

// ---------------------------------------------------------------- rows and slices

// A row pair in 16-byte slots laid out on the base row's alignment: slot q holds ids
// [q*VEC - shift, q*VEC - shift + VEC). The reward row uses vector loads too when its
// misalignment is the same (the usual case); otherwise it is read element by element.
template <typename T>
struct RowView {
  static constexpr int kVec = VecWidth<T>::value;
  const T* base;
  const T* reward;
  int vocab;  // ids within a row are int: vocab_size < 2^31 (taro_step_cuda_unsupported)
  int nslots;
  int shift;
  bool base_vec, reward_vec;

  __device__ RowView(const StepParams& p, int64_t row) {
    base = static_cast<const T*>(p.base_logits) + row * p.base_stride;
    reward = static_cast<const T*>(p.reward_logits) + row * p.reward_stride;
    vocab = int(p.vocab_size);
    const uintptr_t ab = reinterpret_cast<uintptr_t>(base), ar = reinterpret_cast<uintptr_t>(reward);
    const bool typed = ab % sizeof(T) == 0 && ar % sizeof(T) == 0;
    shift = typed ? int((ab / sizeof(T)) % kVec) : 0;
    base_vec = typed;
    reward_vec = typed && int((ar / sizeof(T)) % kVec) == shift;
    nslots = (vocab - 1 + shift) / kVec + 1;
  }
  __device__ int slice_begin(int slice, int slices) const { return int(int64_t(nslots) * slice / slices); }
};

// Slots (16 bytes per model) each thread keeps in flight while it works on another, in
// phases 3-4: 2 CTAs x 256 threads x 2 models x 2 x 16 B = 32 KB per SM outstanding (about
// what an H200 SM needs to cover DRAM latency at its share of the bandwidth; one slot gives 16 KB).
constexpr int kSlotsInFlight = 2;
// Phase 1's body (two online states, two top-K filters) leaves ptxas no registers for a
// second slot within the 128-register cap of two CTAs per SM: with K buckets 8-64 it
// spills (8 bytes, bf16 on sm_90a), so there one slot is in flight; the bucket-1 kernel
// (GenARM, and the router at K = 1) keeps two and does not spill (with one slot it did).
template <int KB>
constexpr int kSlotsInFlightPhase1 = KB == 1 ? 2 : 1;

// Calls body(xb, xr, start, active) (raw T values) once per group of kThreads slots of
// [q0, q1), in order. A thread keeps kSlots slots loading: when it takes a slot out of its
// buffer it issues the load of the slot kSlots groups ahead into the same registers, so
// kSlots + 1 slots of registers give kSlots slots in flight. `start` is the first id of
// this thread's slot; `active` is false past q1. Every thread makes the same calls; body
// returns false (the same in every thread) to stop early. One call offers at most
// kThreads * kVec values (the top-K candidate buffer).
template <int kSlots, typename T, typename Body>
__device__ __forceinline__ void for_each_tile(const RowView<T>& v, int q0, int q1, Body body) {
  constexpr int kVec = RowView<T>::kVec;
  constexpr int kStep = kThreads * kSlots;
  const int ntiles = (q1 - q0 + kStep - 1) / kStep;
  T bb[kSlots][kVec] = {}, br[kSlots][kVec] = {};  // past q1: zeros, never used
  auto load = [&](int q, T(&ob)[kVec], T(&orr)[kVec]) {
    if (q < q1) {
      const int start = q * kVec - v.shift;
      load_slot(v.base, start, v.vocab, v.base_vec, ob);
      load_slot(v.reward, start, v.vocab, v.reward_vec, orr);
    }
  };
#pragma unroll
  for (int u = 0; u < kSlots; ++u) load(q0 + u * kThreads + threadIdx.x, bb[u], br[u]);
  for (int tile = 0; tile < ntiles; ++tile) {
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
      const int q = q0 + tile * kStep + u * kThreads + int(threadIdx.x);
      T xb[kVec], xr[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        xb[e] = bb[u][e];
        xr[e] = br[u][e];
      }
      load(q + kStep, bb[u], br[u]);
      if (!body(xb, xr, q * kVec - v.shift, q < q1)) return;
    }
  }
}

// The mixed score z = s / T (T > 0) or s, s = (x_b - c_b) + alpha (x_r - c_r) with the reward
// term 0 when alpha == 0: the spec's lp_b + alpha lp_r up to a per-row constant for any row
// constants c. With the router c is the row maxima: fp32 rounds z on the grid of |z|, and the top
// scores are then small (relative to the log-normalisers they were -log V at a flat row, 2e-3 off
// at T = 1e-3). GenARM mixes the raw logits (c = 0), one read; its z is exact to 1.5 units of the
// last place at |z|, within the spec at |z| <= 256 but not at logits near 1e4 or a low T, where the
// CPU and Triton kernels mix again relative to the maxima (not done here: written without a GPU
// to run it). Explicit round-to-nearest intrinsics (one FMA): phases 3 and 4 compute the same z
// bit for bit.
struct MixedScore {
  float c_b, c_r, alpha, inv_t;
  bool mix, scaled;
  __device__ __forceinline__ float operator()(float xb, float xr) const {
    const float b = __fsub_rn(xb, c_b);
    const float s = mix ? __fmaf_rn(alpha, __fsub_rn(xr, c_r), b) : b;
    return scaled ? __fmul_rn(s, inv_t) : s;
  }
};

struct EntropyPair {
  EntropyStat b, r;
};

// Merges the S entropy partials of `row` (phase 2, the row's router CTA).
template <int KB>
__device__ __forceinline__ EntropyPair merge_entropy_partials(SharedStorage<KB>& sh, const float4* stats,
                                                           int64_t row, int slices) {
  EntropyPair acc{entropy_stat_empty(), entropy_stat_empty()};
  for (int j = threadIdx.x; j < slices; j += kThreads) {
    const float4 b = __ldcg(&stats[(row * slices + j) * 2 + 0]);
    const float4 r = __ldcg(&stats[(row * slices + j) * 2 + 1]);
    acc.b = entropy_stat_merge(acc.b, {b.x, b.y, b.z});
    acc.r = entropy_stat_merge(acc.r, {r.x, r.y, r.z});
  }
  return block_reduce(
      acc,
      [](EntropyPair a, EntropyPair c) {
        return EntropyPair{entropy_stat_merge(a.b, c.b), entropy_stat_merge(a.r, c.r)};
      },
      scratch_as<EntropyPair>(sh));
}

// Asks L2 for [ptr, ptr + bytes), the lines spread over the whole grid (fire and forget:
// no registers wait on it). Phase 1 prefetches the router weights that phase 2 reads on the
// critical path, which a model forward between two steps has evicted from L2.
__device__ __forceinline__ void prefetch_l2_grid(const void* ptr, size_t bytes) {
  constexpr size_t kLine = 128;
  const char* base = static_cast<const char*>(ptr);
  for (size_t off = (size_t(blockIdx.x) * kThreads + threadIdx.x) * kLine; off < bytes;
       off += size_t(gridDim.x) * kThreads * kLine)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
}

// ---------------------------------------------------------------- phase 1

template <typename T, int KB>
__device__ void slice_stats_and_topk(const StepParams& p, SharedStorage<KB>& sh, const Workspace& ws,
                                     int64_t row, int slice, int slices) {
  constexpr int kVec = RowView<T>::kVec;
  const RowView<T> v(p, row);
  const int q0 = v.slice_begin(slice, slices), q1 = v.slice_begin(slice + 1, slices);
  const int k = p.k;
  EntropyPair st{entropy_stat_empty(), entropy_stat_empty()};
  TopKThread tk;
  topk_init(sh.topk, tk, 0, 0);
  bool seeded = false;
  for_each_tile<kSlotsInFlightPhase1<KB>>(v, q0, q1, [&](const T(&xb)[kVec], const T(&xr)[kVec], int start, bool active) {
    if (!seeded) {  // the first tile's per-thread maxima bound the K-th value
      float mb = -INFINITY, mr = -INFINITY;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int id = start + e;
        if (active && id >= 0 && id < v.vocab) {
          mb = fmaxf(mb, to_float(xb[e]));
          mr = fmaxf(mr, to_float(xr[e]));
        }
      }
      topk_seed(tk, reinterpret_cast<float2*>(&sh.u.cand[0][0]), scratch_as<float2>(sh), k, mb, mr);
      seeded = true;
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const int id = start + e;
      const bool valid = active && id >= 0 && id < v.vocab;
      const float fb = to_float(xb[e]), fr = to_float(xr[e]);
      if (valid) {
        entropy_stat_add(st.b, fb);
        entropy_stat_add(st.r, fr);
      }
      topk_offer_value(sh.topk, tk, sh.u.cand, 0, valid, fb, id);
      topk_offer_value(sh.topk, tk, sh.u.cand, 1, valid, fr, id);
    }
    int had[2];
    topk_end_tile(sh.topk, tk, sh.u.cand, k, had);
    return true;
  });
  st = block_reduce(
      st,
      [](EntropyPair a, EntropyPair c) {
        return EntropyPair{entropy_stat_merge(a.b, c.b), entropy_stat_merge(a.r, c.r)};
      },
      scratch_as<EntropyPair>(sh));
  const int64_t item = row * slices + slice;
  if (threadIdx.x == 0) {
    ws.stats[item * 2 + 0] = make_float4(st.b.m, st.b.d, st.b.t, 0.f);
    ws.stats[item * 2 + 1] = make_float4(st.r.m, st.r.d, st.r.t, 0.f);
  }
  for (int i = threadIdx.x; i < 2 * KB; i += kThreads) {
    const int m = i / KB, j = i % KB;
    ws.keys[(item * 2 + m) * KB + j] = j < k ? sh.topk.list[m][m ? tk.cur[1] : tk.cur[0]][j] : 0;
  }
  __syncthreads();  // shared memory is reused by this CTA's next item
}

// ---------------------------------------------------------------- phase 2

struct KeyPair {
  uint64_t b, r;
};

template <int KB>
__device__ void route_row(const StepParams& p, SharedStorage<KB>& sh, const Workspace& ws, int64_t row,
                          int slices) {
  const int k = p.k;
  const EntropyPair st = merge_entropy_partials(sh, ws.stats, row, slices);
  const float log_d_b = logf(st.b.d), log_d_r = logf(st.r.d);
  if (threadIdx.x == 0) ws.row_max[row] = make_float2(st.b.m, st.r.m);  // for every CTA of the row: MixedScore's c

  // Two lower bounds of each row's K-th key: the largest K-th key of any slice (that slice
  // alone has K keys at least that large) and the K-th largest of the slices' maxima (K
  // slices each hold a key at least that large; the tighter one when the row's top keys
  // are spread over many slices, as at B = 1). The latter is max{m_j : #{i : m_i >= m_j} >= k},
  // counted over the maxima in shared memory (free candidate buffers).
  const uint64_t* keys = ws.keys + row * slices * 2 * KB;
  uint64_t* maxima = &sh.u.cand[0][0];  // [2][kMaxSlices]
  KeyPair kth{0, 0};
  for (int j = threadIdx.x; j < slices; j += kThreads) {
    kth.b = max(kth.b, load_cg(keys + (j * 2 + 0) * KB + k - 1));
    kth.r = max(kth.r, load_cg(keys + (j * 2 + 1) * KB + k - 1));
    maxima[j] = load_cg(keys + (j * 2 + 0) * KB);
    maxima[kMaxSlices + j] = load_cg(keys + (j * 2 + 1) * KB);
  }
  __syncthreads();
  for (int j = threadIdx.x; j < slices; j += kThreads) {
    const uint64_t mb = maxima[j], mr = maxima[kMaxSlices + j];
    int ge_b = 0, ge_r = 0;
    for (int i = 0; i < slices; ++i) {
      ge_b += int(maxima[i] >= mb);
      ge_r += int(maxima[kMaxSlices + i] >= mr);
    }
    if (ge_b >= k) kth.b = max(kth.b, mb);
    if (ge_r >= k) kth.r = max(kth.r, mr);
  }
  kth = block_reduce(kth, [](KeyPair a, KeyPair c) { return KeyPair{max(a.b, c.b), max(a.r, c.r)}; },
                     scratch_as<KeyPair>(sh));
  TopKThread tk;
  topk_init(sh.topk, tk, kth.b ? kth.b - 1 : 0, kth.r ? kth.r - 1 : 0);

  // Stream the S sorted lists position-major (entry e = position * S + slice), a tile of
  // kCandidates >= S entries at a time. Once a tile offers no candidate for a model, no
  // later entry can: each is below its own list's entry one tile earlier.
  constexpr int kPer = kCandidates / kThreads;
  const int64_t total = int64_t(k) * slices;
  bool done[2] = {false, false};
  for (int64_t tile = 0; tile < total && !(done[0] && done[1]); tile += kCandidates) {
    uint64_t key[2][kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int64_t e = tile + i * kThreads + threadIdx.x;
      const int pos = int(e / slices), j = int(e % slices);
#pragma unroll
      for (int m = 0; m < 2; ++m)
        key[m][i] = (e < total && !done[m]) ? load_cg(keys + (j * 2 + m) * KB + pos) : 0;
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      topk_offer(sh.topk, tk, sh.u.cand, 0, key[0][i] != 0, key[0][i]);
      topk_offer(sh.topk, tk, sh.u.cand, 1, key[1][i] != 0, key[1][i]);
    }
    int had[2];
    topk_end_tile(sh.topk, tk, sh.u.cand, k, had);
    done[0] = done[0] || had[0] == 0;
    done[1] = done[1] || had[1] == 0;
  }

  // Router input x = [v_b, v_r, H_b, H_r, E[i_b], E[i_r]] (candidate buffers are free now).
  const int d = p.router.embed_dim;
  const int dim = 2 * k + 2 + 2 * k * d;
  float* x = sh.u.features;
  const uint64_t* list_b = sh.topk.list[0][tk.cur[0]];
  const uint64_t* list_r = sh.topk.list[1][tk.cur[1]];
  for (int i = threadIdx.x; i < 2 * k; i += kThreads) {
    const bool reward = i >= k;
    const uint64_t key = (reward ? list_r : list_b)[reward ? i - k : i];
    // (x - m) - log d: x - m is exact near the max, where x - lse would round lse to fp32's grid
    // at |m| (5e-4 at 1e4; the spec's alpha tolerance is 1e-4).
    const float m = reward ? st.r.m : st.b.m, log_d = reward ? log_d_r : log_d_b;
    const float lp = key ? (topk_key_value(key) - m) - log_d : -INFINITY;
    x[i] = fmaxf(lp, kFeatureLogprobFloor);
  }
  if (threadIdx.x == 0) {
    x[2 * k] = log_d_b - st.b.t / st.b.d;  // entropies
    x[2 * k + 1] = log_d_r - st.r.t / st.r.d;
  }
  const bool bf16_embed = p.router.embed_dtype == DType::kBFloat16;
  for (int i = threadIdx.x; i < 2 * k * d; i += kThreads) {
    const bool reward = i >= k * d;
    const int rem = reward ? i - k * d : i;
    const uint64_t key = (reward ? list_r : list_b)[rem / d];
    const int64_t at = int64_t(key ? topk_key_id(key) : 0) * d + rem % d;
    x[2 * k + 2 + i] = bf16_embed ? __bfloat162float(__ldg(static_cast<const __nv_bfloat16*>(p.router.embed) + at))
                                  : __ldg(static_cast<const float*>(p.router.embed) + at);
  }
  __syncthreads();

  // h = silu(W1 x + b1), u = w2 . h + b2, alpha = alpha_max * sigmoid(u). Warp w owns hidden
  // units w, w + kWarps, ...; it walks kUnitsPerWarp of them at once with independent
  // accumulators (lanes stride the input), so that many W1 loads per lane are in flight
  // instead of one dependent chain per unit. W1 was prefetched into L2 during phase 1.
  constexpr int kUnitsPerWarp = 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int hidden = p.router.hidden;
  float u_part = 0.f;
  for (int h0 = warp; h0 < hidden; h0 += kWarps * kUnitsPerWarp) {
    float acc[kUnitsPerWarp];
#pragma unroll
    for (int j = 0; j < kUnitsPerWarp; ++j) acc[j] = 0.f;
    for (int i = lane; i < dim; i += 32) {
      const float xi = x[i];
#pragma unroll
      for (int j = 0; j < kUnitsPerWarp; ++j) {
        const int h = h0 + j * kWarps;
        if (h < hidden) acc[j] += __ldg(p.router.w1 + int64_t(h) * dim + i) * xi;
      }
    }
#pragma unroll
    for (int j = 0; j < kUnitsPerWarp; ++j) {
      float a = acc[j];
#pragma unroll
      for (int delta = 16; delta > 0; delta >>= 1) a += __shfl_xor_sync(kFullMask, a, delta);
      const int h = h0 + j * kWarps;
      if (lane == 0 && h < hidden) {
        const float z = a + __ldg(p.router.b1 + h);
        u_part += __ldg(p.router.w2 + h) * (z / (1.f + expf(-z)));
      }
    }
  }
  float* partial = scratch_as<float>(sh);
  if (lane == 0) partial[warp] = u_part;
  __syncthreads();
  if (threadIdx.x == 0) {
    float u = __ldg(p.router.b2);
    for (int w = 0; w < kWarps; ++w) u += partial[w];
    p.alpha[row] = p.router.alpha_max / (1.f + expf(-u));
  }
  __syncthreads();
}

// ---------------------------------------------------------------- phase 3

// The row's score. With the router, s is relative to the row maxima phase 2 stored. GenARM
// (alpha_override) mixes the raw logits (MixedScore), so it reads each row once (no phase 1).
__device__ __forceinline__ MixedScore row_mixed_score(const StepParams& p, const Workspace& ws, int64_t row) {
  MixedScore mix;
  const bool router = !p.use_alpha_override;
  const float2 c = router ? __ldcg(&ws.row_max[row]) : make_float2(0.f, 0.f);
  const float alpha = router ? __ldcg(p.alpha + row) : p.alpha_override;
  mix.c_b = c.x;
  mix.c_r = c.y;
  mix.alpha = alpha;
  mix.mix = alpha != 0.f;
  mix.scaled = p.temperature > 0.f;
  mix.inv_t = mix.scaled ? 1.f / p.temperature : 1.f;
  return mix;
}

template <typename T, int KB>
__device__ void slice_scores(const StepParams& p, SharedStorage<KB>& sh, const Workspace& ws, int64_t row,
                             int slice, int slices) {
  constexpr int kVec = RowView<T>::kVec;
  const MixedScore mix = row_mixed_score(p, ws, row);

  const RowView<T> v(p, row);
  ScoreStat sc = score_stat_empty();
  for_each_tile<kSlotsInFlight>(v, v.slice_begin(slice, slices), v.slice_begin(slice + 1, slices),
                [&](const T(&xb)[kVec], const T(&xr)[kVec], int start, bool active) {
#pragma unroll
                  for (int e = 0; e < kVec; ++e) {
                    const int id = start + e;
                    if (active && id >= 0 && id < v.vocab) score_stat_add(sc, mix(to_float(xb[e]), to_float(xr[e])), id);
                  }
                  return true;
                });
  sc = block_reduce(sc, score_stat_merge, scratch_as<ScoreStat>(sh));
  if (threadIdx.x == 0)
    ws.scores[row * slices + slice] = make_float4(sc.m, sc.d, sc.best, __int_as_float(sc.best_id));
  __syncthreads();
}

// ---------------------------------------------------------------- phase 4

template <typename T, int KB>
__device__ void finish_slice(const StepParams& p, SharedStorage<KB>& sh, const Workspace& ws, int64_t row,
                             int slice, int slices) {
  constexpr int kVec = RowView<T>::kVec;
  const bool sampling = p.temperature > 0.f;
  if (!(slice == 0 || sampling || p.logprobs != nullptr)) return;

  // Row max M and argmax from the slice partials, then each slice's share of sum exp(z - M).
  ScoreStat acc = score_stat_empty();
  for (int j = threadIdx.x; j < slices; j += kThreads) {
    const float4 s = __ldcg(&ws.scores[row * slices + j]);
    acc = score_stat_merge(acc, {s.x, s.y, s.z, __float_as_int(s.w)});
  }
  acc = block_reduce(acc, score_stat_merge, scratch_as<ScoreStat>(sh));
  const float row_max = acc.m;
  float* weight = sh.u.slice_weight;
  for (int j = threadIdx.x; j < slices; j += kThreads) {
    const float4 s = __ldcg(&ws.scores[row * slices + j]);
    weight[j] = s.y > 0.f ? s.y * __expf(s.x - row_max) : 0.f;
  }
  __syncthreads();
  // Warp 0 scans the weights in slice order: lane l sums a contiguous chunk, a warp scan
  // gives each chunk its offset. The same code on the same data gives every CTA of the
  // row the same total, threshold and crossing slice: the first slice with weight > 0
  // whose inclusive prefix exceeds u * total, else the last slice with weight > 0.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int per_lane = (slices + 31) / 32;
    const int j0 = lane * per_lane, j1 = min(j0 + per_lane, slices);
    float chunk = 0.f;
    for (int j = j0; j < j1; ++j) chunk += weight[j];
    float incl = chunk;
#pragma unroll
    for (int delta = 1; delta < 32; delta <<= 1) {
      const float up = __shfl_up_sync(kFullMask, incl, delta);
      if (lane >= delta) incl += up;
    }
    const float below = __shfl_up_sync(kFullMask, incl, 1);
    const float total = __shfl_sync(kFullMask, incl, 31);
    const float threshold = sampling ? __ldg(p.uniform + row) * total : 0.f;
    int hit = -1, last = -1;
    float hit_before = 0.f, last_before = 0.f, prefix = lane > 0 ? below : 0.f;
    for (int j = j0; j < j1; ++j) {
      const float w = weight[j];
      if (w > 0.f) {
        if (hit < 0 && prefix + w > threshold) {
          hit = j;
          hit_before = prefix;
        }
        last = j;
        last_before = prefix;
      }
      prefix += w;
    }
    const unsigned hits = __ballot_sync(kFullMask, hit >= 0);
    const unsigned lasts = __ballot_sync(kFullMask, last >= 0);
    const int src = hits ? __ffs(hits) - 1 : (lasts ? 31 - __clz(lasts) : 0);
    const int crossing = __shfl_sync(kFullMask, hits ? hit : last, src);
    const float before = __shfl_sync(kFullMask, hits ? hit_before : last_before, src);
    if (lane == 0) {
      sh.bcast_f[0] = total;
      sh.bcast_f[1] = threshold;
      sh.bcast_f[2] = before;
      sh.bcast_i[0] = max(crossing, 0);
    }
  }
  __syncthreads();
  const float total = sh.bcast_f[0], threshold = sh.bcast_f[1], before = sh.bcast_f[2];
  const int crossing = sh.bcast_i[0];
  __syncthreads();  // bcast and weights are reused by this CTA's next item

  const MixedScore mix = row_mixed_score(p, ws, row);
  const float log_norm = row_max + logf(total);
  const RowView<T> v(p, row);
  const int q0 = v.slice_begin(slice, slices), q1 = v.slice_begin(slice + 1, slices);

  if (p.logprobs != nullptr) {
    float* out = p.logprobs + row * v.vocab;
    for_each_tile<kSlotsInFlight>(v, q0, q1, [&](const T(&xb)[kVec], const T(&xr)[kVec], int start, bool active) {
      float lp[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) lp[e] = mix(to_float(xb[e]), to_float(xr[e])) - log_norm;
      float* dst = out + start;
      if (active && start >= 0 && start + kVec <= v.vocab && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
#pragma unroll
        for (int e = 0; e < kVec; e += 4)
          *reinterpret_cast<float4*>(dst + e) = make_float4(lp[e], lp[e + 1], lp[e + 2], lp[e + 3]);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e)
          if (active && start + e >= 0 && start + e < v.vocab) dst[e] = lp[e];
      }
      return true;
    });
  }

  int token = -1;
  if (!sampling && slice == 0) {
    token = acc.best_id == INT_MAX ? 0 : acc.best_id;
  } else if (sampling && slice == crossing) {
    // Inverse CDF inside the slice: the first id with p > 0 whose inclusive prefix
    // (carried over the slices before it) exceeds the threshold; if rounding leaves
    // none, the last id with p > 0. Ids below V only; never a zero-probability id.
    float carry = before;
    int found = INT_MAX, last_positive = -1;
    float* scan_scratch = scratch_as<float>(sh);
    for_each_tile<kSlotsInFlight>(v, q0, q1, [&](const T(&xb)[kVec], const T(&xr)[kVec], int start, bool active) {
      float prob[kVec], cum[kVec], run = 0.f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int id = start + e;
        const float z = (active && id >= 0 && id < v.vocab) ? mix(to_float(xb[e]), to_float(xr[e])) : -INFINITY;
        prob[e] = z == -INFINITY ? 0.f : __expf(z - row_max);
        run += prob[e];
        cum[e] = run;
        if (prob[e] > 0.f) last_positive = id;
      }
      float tile_total;
      const float offset = carry + block_exclusive_scan(run, scan_scratch, tile_total);
      int mine = INT_MAX;
#pragma unroll
      for (int e = kVec - 1; e >= 0; --e)
        if (prob[e] > 0.f && offset + cum[e] > threshold) mine = int(start + e);
      found = block_reduce(mine, [](int a, int b) { return min(a, b); }, scratch_as<int>(sh));
      carry += tile_total;
      return found == INT_MAX;
    });
    last_positive = block_reduce(last_positive, [](int a, int b) { return max(a, b); }, scratch_as<int>(sh));
    token = found != INT_MAX ? found : max(last_positive, 0);
  }
  if (token >= 0 && threadIdx.x == 0) {
    const float z = mix(to_float(v.base[token]), to_float(v.reward[token]));
    p.tokens[row] = token;
    p.token_logprobs[row] = z - log_norm;
    if (p.use_alpha_override) p.alpha[row] = p.alpha_override;
  }
  __syncthreads();
}

// ---------------------------------------------------------------- kernel

template <typename T, int KB>
__global__ void __launch_bounds__(kThreads, 2) taro_step_kernel(StepParams p, unsigned char* workspace,
                                                             int slices) {
  __shared__ SharedStorage<KB> sh;
  cg::grid_group grid = cg::this_grid();
  const bool router = !p.use_alpha_override;
  const WorkspaceLayout layout = workspace_layout(p.batch, slices, KB, router);
  const Workspace ws{reinterpret_cast<uint64_t*>(workspace + layout.keys),
                     reinterpret_cast<float4*>(workspace + layout.stats),
                     reinterpret_cast<float4*>(workspace + layout.scores),
                     reinterpret_cast<float2*>(workspace + layout.row_max)};
  const int64_t items = p.batch * slices;

  if (router) {
    const size_t hidden = size_t(p.router.hidden), dim = size_t(2 * p.k + 2 + 2 * p.k * p.router.embed_dim);
    prefetch_l2_grid(p.router.w1, hidden * dim * sizeof(float));
    prefetch_l2_grid(p.router.b1, hidden * sizeof(float));
    prefetch_l2_grid(p.router.w2, hidden * sizeof(float));
  }
  if (router) {
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x)
      slice_stats_and_topk<T, KB>(p, sh, ws, item / slices, int(item % slices), slices);
    grid.sync();
    for (int64_t row = blockIdx.x; row < p.batch; row += gridDim.x) route_row<KB>(p, sh, ws, row, slices);
    grid.sync();
  }
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x)
    slice_scores<T, KB>(p, sh, ws, item / slices, int(item % slices), slices);
  grid.sync();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x)
    finish_slice<T, KB>(p, sh, ws, item / slices, int(item % slices), slices);
}

// The kernel for K bucket `kb` (1, 8, 16, 32 or 64), as a host launch handle.
template <typename T>
const void* step_kernel_for_bucket(int kb) {
  switch (kb) {
    case 1: return reinterpret_cast<const void*>(taro_step_kernel<T, 1>);
    case 8: return reinterpret_cast<const void*>(taro_step_kernel<T, 8>);
    case 16: return reinterpret_cast<const void*>(taro_step_kernel<T, 16>);
    case 32: return reinterpret_cast<const void*>(taro_step_kernel<T, 32>);
    case 64: return reinterpret_cast<const void*>(taro_step_kernel<T, 64>);
    default: return nullptr;
  }
}

// One per logits dtype, each in its own translation unit (they compile in parallel).
const void* step_kernel_f32(int kb);
const void* step_kernel_bf16(int kb);
const void* step_kernel_f16(int kb);

}  // namespace cuda_detail
}  // namespace taro
