// Device building blocks of the fused TARo step: logits loads, online softmax
// statistics, block reductions and scans, and the block top-K with a threshold filter.
//
// Everything here is exact and deterministic for a fixed block size: a reduction
// combines warp results in one fixed order and every thread reads the same result,
// so two CTAs reducing the same data get bit-identical values (the kernel relies on
// that to let every CTA of a row agree on the row's normaliser and CDF split).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstring>

namespace taro {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Candidate buffer per model (entries), >= one tile of elements (256 threads x 8).
constexpr int kCandidates = 2048;

// ---------------------------------------------------------------- loads

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Elements of T per 16-byte vector.
template <typename T>
struct VecWidth {
  static constexpr int value = 16 / sizeof(T);
};

// Loads the VEC ids [start, start + VEC) of `row` (raw, converted to fp32 at use, which
// halves the registers a prefetched slot holds for 16-bit logits). Ids outside
// [0, vocab) are not read and hold 0; callers skip them by id. `vector_ok`: row + start
// is 16-byte aligned for this row, so a slot inside [0, vocab) is one 16-byte load.
template <typename T>
__device__ __forceinline__ void load_slot(const T* row, int start, int vocab, bool vector_ok,
                                          T (&out)[VecWidth<T>::value]) {
  constexpr int kVec = VecWidth<T>::value;
  if (vector_ok && start >= 0 && start + kVec <= vocab) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + start));
    memcpy(out, &raw, sizeof(raw));
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const int64_t id = start + e;
      out[e] = (id >= 0 && id < vocab) ? row[id] : T{};
    }
  }
}

// ---------------------------------------------------------------- online statistics

// Online softmax state over values x: m = max, d = sum exp(x - m),
// t = sum exp(x - m) * (x - m). Empty when d == 0 (then m = -inf, t = 0).
// Entropy of softmax(x) = log d - t / d; log-sum-exp = m + log d.
// t is kept relative to m (not sum exp(x-m)*x) so it does not cancel against m + log d.
struct EntropyStat {
  float m, d, t;
};

__device__ __forceinline__ EntropyStat entropy_stat_empty() { return {-INFINITY, 0.f, 0.f}; }

// Adds one value; -inf (masked) contributes nothing, as in the spec's entropy.
__device__ __forceinline__ void entropy_stat_add(EntropyStat& s, float x) {
  if (x == -INFINITY) return;
  if (x > s.m) {
    if (s.d > 0.f) {
      const float diff = s.m - x;  // < 0
      const float scale = __expf(diff);
      s.t = scale * (s.t + diff * s.d);
      s.d = s.d * scale + 1.f;
    } else {
      s.t = 0.f;
      s.d = 1.f;
    }
    s.m = x;
  } else {
    const float diff = x - s.m;  // <= 0
    const float e = __expf(diff);
    s.d += e;
    s.t += e * diff;
  }
}

__device__ __forceinline__ EntropyStat entropy_stat_merge(EntropyStat a, EntropyStat b) {
  if (b.d == 0.f) return a;
  if (a.d == 0.f) return b;
  const float m = fmaxf(a.m, b.m);
  const float da = a.m - m, db = b.m - m;
  const float sa = __expf(da), sb = __expf(db);
  return {m, a.d * sa + b.d * sb, sa * (a.t + da * a.d) + sb * (b.t + db * b.d)};
}

// Online (max, sum exp) of the mixed scores plus the argmax (lowest id on ties).
struct ScoreStat {
  float m, d;
  float best;  // max value seen (== m when d > 0)
  int best_id;  // INT_MAX when empty
};

__device__ __forceinline__ ScoreStat score_stat_empty() { return {-INFINITY, 0.f, -INFINITY, INT_MAX}; }

// Values are added in increasing id order within a thread, so a strict `>` keeps the
// lowest id among equal maxima.
__device__ __forceinline__ void score_stat_add(ScoreStat& s, float z, int id) {
  if (z > s.best) {
    s.best = z;
    s.best_id = id;
  }
  if (z == -INFINITY) return;
  if (z > s.m) {
    s.d = s.d > 0.f ? s.d * __expf(s.m - z) + 1.f : 1.f;
    s.m = z;
  } else {
    s.d += __expf(z - s.m);
  }
}

__device__ __forceinline__ ScoreStat score_stat_merge(ScoreStat a, ScoreStat b) {
  ScoreStat r;
  if (b.d == 0.f) {
    r.m = a.m;
    r.d = a.d;
  } else if (a.d == 0.f) {
    r.m = b.m;
    r.d = b.d;
  } else {
    r.m = fmaxf(a.m, b.m);
    r.d = a.d * __expf(a.m - r.m) + b.d * __expf(b.m - r.m);
  }
  const bool take_b = b.best > a.best || (b.best == a.best && b.best_id < a.best_id);
  r.best = take_b ? b.best : a.best;
  r.best_id = take_b ? b.best_id : a.best_id;
  return r;
}

// ---------------------------------------------------------------- block reduce / scan

template <typename T>
__device__ __forceinline__ T shfl_down_any(T v, int delta) {
  static_assert(sizeof(T) % 4 == 0, "shuffle of 4-byte words");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < int(sizeof(T) / 4); ++i) w[i] = __shfl_down_sync(kFullMask, w[i], delta);
  memcpy(&v, w, sizeof(T));
  return v;
}

// Block-wide reduction; every thread returns the same value. `scratch` holds kWarps
// values of T. Contains two __syncthreads: call from all threads of the block.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int delta = 16; delta > 0; delta >>= 1) v = op(v, shfl_down_any(v, delta));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// Exclusive block scan of one float per thread; `total` gets the block sum.
// `scratch` holds kWarps floats. Two __syncthreads.
__device__ __forceinline__ float block_exclusive_scan(float v, float* scratch, float& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float incl = v;
#pragma unroll
  for (int delta = 1; delta < 32; delta <<= 1) {
    const float up = __shfl_up_sync(kFullMask, incl, delta);
    if (lane >= delta) incl += up;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  float warp_offset = 0.f;
  total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w == warp) warp_offset = total;
    total += scratch[w];
  }
  __syncthreads();
  return warp_offset + (incl - v);
}

// ---------------------------------------------------------------- top-K keys

// A 64-bit key whose unsigned order is (value descending, id ascending) reversed:
// larger key = larger value, then lower id. Key 0 is below every real key and marks
// an empty list slot.
__device__ __forceinline__ uint64_t topk_key(float x, int id) {
  x += 0.0f;  // -0 -> +0, so that equal values tie on the id as in the reference
  const uint32_t bits = __float_as_uint(x);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (uint64_t(ordered) << 32) | uint64_t(~uint32_t(id));
}

__device__ __forceinline__ float topk_key_value(uint64_t key) {
  const uint32_t ordered = uint32_t(key >> 32);
  return __uint_as_float((ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered);
}

__device__ __forceinline__ int topk_key_id(uint64_t key) { return int(~uint32_t(key)); }

// Number of entries of the descending array a[0, n) that are > key.
__device__ __forceinline__ int count_greater(const uint64_t* a, int n, uint64_t key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] > key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ __forceinline__ int pow2_ceil(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Sorts a0[0, n0) and a1[0, n1) descending (n0, n1 powers of two or 0) with one
// bitonic network run for both, one __syncthreads per stage.
__device__ __forceinline__ void bitonic_sort_desc2(uint64_t* a0, int n0, uint64_t* a1, int n1) {
  const int nmax = max(n0, n1);
  for (int size = 2; size <= nmax; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int c = threadIdx.x; c < (nmax >> 1); c += kThreads) {
        const int i = ((c & ~(stride - 1)) << 1) | (c & (stride - 1));
        const int j = i + stride;
        const bool descending = (i & size) == 0;
        if (size <= n0 && j < n0) {
          const uint64_t x = a0[i], y = a0[j];
          if ((x < y) == descending) {
            a0[i] = y;
            a0[j] = x;
          }
        }
        if (size <= n1 && j < n1) {
          const uint64_t x = a1[i], y = a1[j];
          if ((x < y) == descending) {
            a1[i] = y;
            a1[j] = x;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Block top-K of two key streams at once (model 0 = base, 1 = reward).
//
// Keys arrive in tiles; a key enters the candidate buffer only if it beats the
// current K-th best (or a known lower bound, `floor`), so after the first tile almost
// nothing does. At the end of a tile with candidates, the buffer is sorted and merged
// into the sorted list by rank (binary search), keeping the top k.
// Shared state lives in `TopKShared`; thread-local state in `TopKThread`.
template <int KB>
struct TopKShared {
  uint64_t list[2][2][KB];  // [model][ping-pong][k], descending, 0 = empty slot
  int count[2];             // candidates in the buffer
};

struct TopKThread {
  int cur[2];         // which ping-pong list is current
  uint64_t thr[2];    // a key must be > thr to be a candidate
  uint64_t floor[2];  // lower bound that never changes (0: none)
  float vthr[2];      // raw-value filter: a candidate's value is >= vthr (cheaper than a key)
  float vseed[2];     // lower bound of the K-th largest value from topk_seed (-inf: none)
};

template <int KB>
__device__ __forceinline__ void topk_init(TopKShared<KB>& s, TopKThread& t, uint64_t floor0, uint64_t floor1) {
  for (int i = threadIdx.x; i < 2 * KB; i += kThreads) s.list[i / KB][0][i % KB] = 0;
  if (threadIdx.x == 0) s.count[0] = s.count[1] = 0;
  __syncthreads();
  t.cur[0] = t.cur[1] = 0;
  t.floor[0] = floor0;
  t.floor[1] = floor1;
  t.thr[0] = floor0;
  t.thr[1] = floor1;
  t.vthr[0] = t.vthr[1] = t.vseed[0] = t.vseed[1] = -INFINITY;
}

// Seeds the raw-value filters before the first offer: the K-th largest of the threads'
// maxima (mb, mr: this thread's largest base and reward value so far, -inf if none) is a
// lower bound of the K-th largest value, since K threads each hold a value at least that
// large. It is max{v_i : #{j : v_j >= v_i} >= k}, counted from shared memory. Without it
// the first tile would offer every key (a full sort). `scratch` holds kThreads float2
// (the candidate buffer is free before the first offer). Call from all threads.
__device__ __forceinline__ void topk_seed(TopKThread& t, float2* scratch, float2* reduce_scratch, int k,
                                          float mb, float mr) {
  scratch[threadIdx.x] = make_float2(mb, mr);
  __syncthreads();
  int ge_b = 0, ge_r = 0;
  if (mb != -INFINITY || mr != -INFINITY) {
    const float4* pairs = reinterpret_cast<const float4*>(scratch);
#pragma unroll 4
    for (int j = 0; j < kThreads / 2; ++j) {
      const float4 two = pairs[j];
      ge_b += int(two.x >= mb) + int(two.z >= mb);
      ge_r += int(two.y >= mr) + int(two.w >= mr);
    }
  }
  const float2 mine = make_float2(mb != -INFINITY && ge_b >= k ? mb : -INFINITY,
                                  mr != -INFINITY && ge_r >= k ? mr : -INFINITY);
  const float2 seed = block_reduce(
      mine, [](float2 a, float2 b) { return make_float2(fmaxf(a.x, b.x), fmaxf(a.y, b.y)); }, reduce_scratch);
  t.vseed[0] = t.vthr[0] = seed.x;
  t.vseed[1] = t.vthr[1] = seed.y;
}

// Appends `key` to model m's candidates when `pred`; all 32 lanes of the warp call it together.
__device__ __forceinline__ void topk_append(int* count, uint64_t (*cand)[kCandidates], int m, bool pred,
                                            uint64_t key) {
  const unsigned mask = __ballot_sync(kFullMask, pred);
  if (mask == 0) return;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  int base = 0;
  if (lane == leader) base = atomicAdd(&count[m], __popc(mask));
  base = __shfl_sync(kFullMask, base, leader);
  if (pred) cand[m][base + __popc(mask & ((1u << lane) - 1u))] = key;
}

// Offers a ready key of model m (phase 2's merge of slice lists).
template <int KB>
__device__ __forceinline__ void topk_offer(TopKShared<KB>& s, const TopKThread& t, uint64_t (*cand)[kCandidates],
                                           int m, bool valid, uint64_t key) {
  topk_append(s.count, cand, m, valid && key > t.thr[m], key);
}

// Offers logit x of token id of model m: one float compare for the many values below the
// filter; the 64-bit key is built only for values that pass it.
template <int KB>
__device__ __forceinline__ void topk_offer_value(TopKShared<KB>& s, const TopKThread& t,
                                                 uint64_t (*cand)[kCandidates], int m, bool valid, float x, int id) {
  bool pred = valid && x >= t.vthr[m];
  uint64_t key = 0;
  if (pred) {
    key = topk_key(x, id);
    pred = key > t.thr[m];
  }
  topk_append(s.count, cand, m, pred, key);
}

// Ends a tile: merges the candidates (if any) into the lists. Returns, per model, the
// number of candidates this tile had (the same value in every thread).
// Call from all threads; at most kCandidates offers per model per tile.
template <int KB>
__device__ __forceinline__ void topk_end_tile(TopKShared<KB>& s, TopKThread& t, uint64_t (*cand)[kCandidates],
                                              int k, int (&had)[2]) {
  __syncthreads();
  const int n0 = s.count[0], n1 = s.count[1];
  had[0] = n0;
  had[1] = n1;
  if (n0 == 0 && n1 == 0) {
    __syncthreads();  // nobody may append to the next tile before everyone read the counts
    return;
  }
  const int p0 = n0 ? pow2_ceil(n0) : 0, p1 = n1 ? pow2_ceil(n1) : 0;
  for (int i = n0 + threadIdx.x; i < p0; i += kThreads) cand[0][i] = 0;
  for (int i = n1 + threadIdx.x; i < p1; i += kThreads) cand[1][i] = 0;
  __syncthreads();
  if (threadIdx.x == 0) s.count[0] = s.count[1] = 0;  // all threads have read the counts
  bitonic_sort_desc2(cand[0], p0, cand[1], p1);       // ends with __syncthreads
  // Merge by rank: list entry r lands at r + #(candidates above it); candidate c at
  // c + #(list entries above it). Keys are distinct except the empty 0s, which all sit
  // in the list, so the new positions are a permutation; those >= k drop out.
  for (int w = threadIdx.x; w < 4 * k; w += kThreads) {
    const int m = w / (2 * k), r = w % (2 * k);
    const int n = m ? n1 : n0;
    if (n == 0) continue;
    const int cn = min(n, k);
    const int cur = m ? t.cur[1] : t.cur[0];  // select, not a dynamic index: keeps t in registers
    const uint64_t* list = s.list[m][cur];
    uint64_t key;
    int pos;
    if (r < k) {
      key = list[r];
      pos = r + count_greater(cand[m], cn, key);
    } else {
      const int c = r - k;
      if (c >= cn) continue;
      key = cand[m][c];
      pos = c + count_greater(list, k, key);
    }
    if (pos < k) s.list[m][cur ^ 1][pos] = key;
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < 2; ++m) {
    if ((m ? n1 : n0) == 0) continue;
    t.cur[m] ^= 1;
    const uint64_t kth = s.list[m][t.cur[m]][k - 1];
    t.thr[m] = kth > t.floor[m] ? kth : t.floor[m];
    if (kth != 0) t.vthr[m] = fmaxf(t.vseed[m], topk_key_value(kth));
  }
}

}  // namespace cuda_detail
}  // namespace taro
