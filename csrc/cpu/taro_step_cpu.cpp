// The fused TARo decode step on the CPU (../../shared/TARO_SPEC.md), torch-free.
//
// Algebra first. For any per-row constants c_b, c_r the mixed score is
// s = lp_b + alpha lp_r = (x_b - c_b) + alpha (x_r - c_r) - const: the log-normalisers are
// per-row constants, so the pick (argmax, or sampling from softmax(s / T)) and the output
// log-probs depend on z = ((x_b - c_b) + alpha (x_r - c_r)) / T alone (`mix`; c: the row maxima,
// or 0 where z stays small enough: kRawScoreLimit). Hence:
//
//   GenARM (alpha given): no pass over either row on its own. Greedy without log-probs is one
//           read of both rows (a fused multiply-add and an argmax, no exp at all); sampling
//           and log-probs add one exp per token (of z). A row whose max z is large (kRawScoreLimit)
//           is mixed again with its maxima as c.
//   TARo:   pass 1 reads both rows once: a running max, sum-exp and entropy term (online
//           softmax, H = log d - t / d with t = sum e^(x-m) (x-m)), and every block's max;
//           the top-K of the raw logits then scans only the blocks whose max reaches the row's
//           K-th largest block max (every other block costs one compare). Then the router MLP
//           gives alpha, and pass 2 is the same as GenARM's, from cache for small batches.
//
// Pass 2 keeps, per block of kBlock tokens, the max of z, its first argmax, and (only
// when sampling or log-probs need it) sum exp(z - block max). Greedy picks from the block
// maxima; sampling walks the block masses in id order and rescans only the block where
// u * total is crossed; log-probs (only when asked) are z - logsumexp(z).
//
// Vector code: GCC vector extensions over kLanes floats (one AVX-512 register with
// -march=native here; the same source compiles to AVX2 or SSE2 sequences elsewhere). bf16
// and fp16 are widened in registers; exp is a Cephes polynomial with the 2^n scale built in
// the exponent bits.
//
// Threads (thread_pool.h: work claiming, sleeping workers): whole rows per item
// when the batch spreads over the threads; otherwise rows are cut into chunks of whole
// blocks, with one parallel_for per pass (pass 1: block maxima and softmax sums; pass 2)
// and the row's cheap part on the calling thread in between: the top-K of the few blocks
// whose max reaches the K-th largest block max of the row, and the router.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

#include "../taro_step.h"
#include "thread_pool.h"

#define TARO_INLINE inline __attribute__((always_inline))

namespace taro {
namespace {

constexpr int kLanes = 16;
typedef float VecF __attribute__((vector_size(4 * kLanes)));
typedef int32_t VecI __attribute__((vector_size(4 * kLanes)));
typedef uint32_t VecU __attribute__((vector_size(4 * kLanes)));
typedef uint16_t VecH __attribute__((vector_size(2 * kLanes)));

constexpr int64_t kBlock = 512;           // tokens per block: the unit of both passes
constexpr int64_t kChunkBlocks = 16;      // blocks per work item when rows are split
// Below this many logits (of one model) per thread, use fewer threads. Waking a sleeping
// worker costs 3-5 us on this project's 2-core AMD VM (16 us after 10 ms idle), and the
// caller sleeps again if the worker still holds an item: a B=1 step at V=128256 split in two
// took 33 us at best against 45 us on one thread, but 51 us against 48 us in the median
// (C++ harness, 3000 calls). So a thread gets at least a full Llama-3 row's work.
constexpr int64_t kMinItemLogits = 131072;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

TARO_INLINE VecF splat(float x) { return VecF{} + x; }

struct Bf16 { uint16_t bits; };
struct Fp16 { uint16_t bits; };

// kLanes uint16 zero-extended to uint32. With AVX-512 one vpmovzxwd from a ymm to a zmm: GCC 12
// takes this project's AMD EPYC for znver3 (-march=native: znver3 tuning plus the AVX-512 flags)
// and lowers __builtin_convertvector there by building the zmm from two ymm halves (extract, two
// converts, insert), which made bf16 steps 1.3-1.8x slower than fp32 per element.
TARO_INLINE VecU zero_extend(VecH h) {
#if defined(__AVX512F__)
  return reinterpret_cast<VecU>(_mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(h)));
#else
  return __builtin_convertvector(h, VecU);
#endif
}

TARO_INLINE VecF widen(VecH h, Bf16*) { return (VecF)(zero_extend(h) << 16); }

// IEEE half -> float without branches and without a denormal intermediate (a thread with
// flush-to-zero / denormals-are-zero set, e.g. torch.set_flush_denormal(True), would read one as
// 0): normal halves by rebiasing the exponent (+112); subnormal halves, m 2^-24, as the normal
// float 2^-14 (1 + m / 1024) less 2^-14, exact; inf/NaN: force the exponent to all ones.
TARO_INLINE VecF widen(VecH h, Fp16*) {
  const VecU u = zero_extend(h);
  const VecU sign = (u & 0x8000u) << 16;
  const VecU magnitude = u & 0x7fffu;
  const VecU shifted = magnitude << 13;
  const VecU normal = shifted + (112u << 23);
  const VecU subnormal = (VecU)((VecF)(shifted + (113u << 23)) - 0x1p-14f);
  VecU bits = magnitude < 0x0400u ? subnormal : normal;
  bits |= (VecU)(magnitude >= 0x7c00u) & 0x7f800000u;
  return (VecF)(bits | sign);
}

// kLanes logits from p, widened to fp32.
TARO_INLINE VecF load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
TARO_INLINE VecF load(const T* p) {
  VecH h;
  std::memcpy(&h, p, sizeof h);
  return widen(h, static_cast<T*>(nullptr));
}
template <typename T>
constexpr T neg_inf() {
  if constexpr (std::is_same_v<T, float>) {
    return kNegInf;
  } else {
    return T{std::is_same_v<T, Bf16> ? uint16_t{0xff80u} : uint16_t{0xfc00u}};
  }
}

inline float to_float(float x) { return x; }
template <typename T>
inline float to_float(T x) {  // the vector widening, so scalar and vector paths agree
  VecH h{};
  h[0] = x.bits;
  return widen(h, static_cast<T*>(nullptr))[0];
}

// A block of n <= kBlock logits as whole vectors, so that no inner loop has a partial load:
// the logits themselves when n is a multiple of kLanes, else a copy into `scratch` padded
// with -inf (the last block of a row; -inf is neutral for max, exp and argmax). `padded`
// receives the length rounded up to kLanes.
template <typename T>
const T* whole_vectors(const T* src, int64_t n, T* scratch, int64_t& padded) {
  padded = (n + kLanes - 1) / kLanes * kLanes;
  if (padded == n) return src;
  std::memcpy(scratch, src, n * sizeof(T));
  for (int64_t i = n; i < padded; ++i) scratch[i] = neg_inf<T>();
  return scratch;
}

TARO_INLINE float hmax(VecF v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}
TARO_INLINE float hsum(VecF v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
TARO_INLINE VecF vmax(VecF a, VecF b) { return a > b ? a : b; }

// Bit l set where v[l] > threshold: one compare into a mask register with AVX-512.
TARO_INLINE uint32_t lanes_above(VecF v, float threshold) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<__m512>(v), _mm512_set1_ps(threshold), _CMP_GT_OQ);
#else
  const VecI above = v > threshold;
  uint32_t mask = 0;
  for (int l = 0; l < kLanes; ++l) mask |= static_cast<uint32_t>(above[l] & 1) << l;
  return mask;
#endif
}

// Bit l set where v[l] >= threshold.
TARO_INLINE uint32_t lanes_at_least(VecF v, float threshold) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<__m512>(v), _mm512_set1_ps(threshold), _CMP_GE_OQ);
#else
  const VecI at_least = v >= threshold;
  uint32_t mask = 0;
  for (int l = 0; l < kLanes; ++l) mask |= static_cast<uint32_t>(at_least[l] & 1) << l;
  return mask;
#endif
}

// Max of x[0, padded), padded a multiple of kLanes; four chains hide the max latency.
template <typename T>
TARO_INLINE float max_of(const T* x, int64_t padded) {
  VecF m0 = splat(kNegInf), m1 = m0, m2 = m0, m3 = m0;
  int64_t i = 0;
  for (; i + 4 * kLanes <= padded; i += 4 * kLanes) {
    m0 = vmax(m0, load(x + i));
    m1 = vmax(m1, load(x + i + kLanes));
    m2 = vmax(m2, load(x + i + 2 * kLanes));
    m3 = vmax(m3, load(x + i + 3 * kLanes));
  }
  for (; i < padded; i += kLanes) m0 = vmax(m0, load(x + i));
  return hmax(vmax(vmax(m0, m1), vmax(m2, m3)));
}

// 2^u for -126 <= u <= 127, 1.8e-7 relative in fp32: u = n + f with n = round(u) (the
// 1.5 * 2^23 trick, whose low mantissa bits then hold n) and |f| <= 1/2; 2^f by a degree-5
// polynomial with p(0) = 1 exactly (a relative least-squares fit on Chebyshev nodes of
// [-1/2, 1/2]; the degree-6 Taylor polynomial is no more accurate in fp32, 2.4e-7, and
// costs one FMA more); 2^n built in the exponent bits.
// With AVX-512 the rounding is one roundscale and 2^n * p one scalef (the same values, three
// instructions fewer per vector: the exp sweep is bound by vector ops, so 12 instead of 15).
TARO_INLINE VecF vexp2_in_range(VecF u) {
#if defined(__AVX512F__)
  const __m512 n = _mm512_roundscale_ps(reinterpret_cast<__m512>(u), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const VecF f = u - reinterpret_cast<VecF>(n);
#else
  const VecF t = u + 12582912.0f;
  const VecF f = u - (t - 12582912.0f);
#endif
  VecF p = f * 1.3218672247603536e-3f + 9.671698324382305e-3f;
  p = p * f + 5.550893023610115e-2f;
  p = p * f + 2.4022237956523895e-1f;
  p = p * f + 6.931468844413757e-1f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), n));
#else
  const VecI scale = ((VecI)t - (0x4B400000 - 127)) << 23;
  return p * (VecF)scale;
#endif
}

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.69314718055994531f;
constexpr float kExp2Lowest = -126.0f;  // 2^u below this is 0 (the fp32 result would be denormal)

#if defined(__AVX512F__) || defined(__FMA__)
constexpr bool kHasFma = true;
#else
constexpr bool kHasFma = false;
#endif

// a * b + c in one rounding where the target has FMA (explicit, so every pass rounds alike).
TARO_INLINE VecF fmadd(VecF a, VecF b, VecF c) {
#if defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                                reinterpret_cast<__m512>(c)));
#elif defined(__FMA__)
  __m256 ah[2], bh[2], ch[2];
  std::memcpy(ah, &a, sizeof a);
  std::memcpy(bh, &b, sizeof b);
  std::memcpy(ch, &c, sizeof c);
  for (int h = 0; h < 2; ++h) ah[h] = _mm256_fmadd_ps(ah[h], bh[h], ch[h]);
  VecF r;
  std::memcpy(&r, ah, sizeof r);
  return r;
#else
  return a * b + c;
#endif
}

// scan_row_slice's u = x log2(e) - mv. kFma: one rounding (fmadd; negating mv is exact),
// mv = m log2(e) rounded; otherwise (x - m) log2(e), mv = m.
template <bool kFma>
TARO_INLINE VecF offset_log2(VecF x, VecF mv) {
  if constexpr (kFma) return fmadd(x, splat(kLog2e), -mv);
  return (x - mv) * kLog2e;
}

// exp(x) for x <= 88; 0 for x < -87.3 (2^-126) and for -inf.
TARO_INLINE VecF vexp(VecF x) {
  const VecF u = x * kLog2e;
  const VecI low = u < kExp2Lowest;
  const VecF e = vexp2_in_range(low ? splat(kExp2Lowest) : u);
  return low ? splat(0.0f) : e;
}

TARO_INLINE float exp_scalar(float x) { return vexp(splat(x))[0]; }

// Online-softmax state of a slice: max m, d = sum exp(x - m), t = sum exp(x - m) (x - m).
// Empty (or all -inf): m = -inf, d = t = 0.
struct SoftmaxStats {
  float m = kNegInf;
  float d = 0.0f;
  float t = 0.0f;

  void merge(const SoftmaxStats& o) {
    if (o.d == 0.0f) return;
    if (d == 0.0f) {
      *this = o;
      return;
    }
    const float mx = std::max(m, o.m);
    const float ca = std::exp(m - mx), cb = std::exp(o.m - mx);
    t = ca * (t + (m - mx) * d) + cb * (o.t + (o.m - mx) * o.d);
    d = ca * d + cb * o.d;
    m = mx;
  }
  // x - logsumexp for a logit x of the slice: (x - m) is exact for the x near m that matter
  // (Sterbenz), where x - (m + log d) would round m + log d to fp32's grid at |m| (1e-3 at 1e4).
  float logprob(float x) const { return (x - m) - std::log(d); }
  // -sum p log p with p = exp(x - m) / d.
  float entropy() const { return std::log(d) - t / d; }
};

struct Candidate {
  float value;
  int32_t id;
};

// Total order of the spec's top-K: larger value first, then lower id.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

// Top-K of one row, offered blocks in increasing id order. Candidates go into a buffer of 2K
// (at least K + 64); when it fills, nth_element keeps the best K and the K-th value becomes
// the collector's own threshold. A later logit equal to it has a higher id than everything
// kept, so admission is strict (x > own). `floor` is a value the caller has proven to be at
// most the row's K-th best, so a logit equal to it may still rank: admission x >= floor.
class TopKCollector {
 public:
  TopKCollector(int k, float floor) : k_(k), capacity_(std::max<int64_t>(2 * k, k + 64)), floor_(floor) {
    buf_.reserve(capacity_);
  }

  // x: n logits from id first_id on, readable as whole vectors (whole_vectors).
  template <typename T>
  void offer_block(const T* x, int64_t n, int64_t first_id, float block_max) {
    if (!admits(block_max)) return;
    // One compare per vector against the stricter of the two conditions, value > own
    // threshold (once full) and value >= floor, kept in locals (members would be reloaded
    // every vector: push may change them). Before the buffer is full every logit >= floor
    // is a candidate, -inf included (a row may have fewer than K finite logits). Lanes past
    // n hold -inf: masked off.
    bool strict = full_ && threshold_ >= floor_;
    float bound = strict ? threshold_ : floor_;
    for (int64_t v = 0; v < n; v += kLanes) {
      const VecF xv = load(x + v);
      uint32_t mask = strict ? lanes_above(xv, bound) : lanes_at_least(xv, bound);
      if (n - v < kLanes) mask &= (1u << (n - v)) - 1u;
      while (mask != 0) [[unlikely]] {
        const int lane = __builtin_ctz(mask);
        mask &= mask - 1;
        const float value = to_float(x[v + lane]);
        if (admits(value)) {
          push({value, static_cast<int32_t>(first_id + v + lane)});
          strict = full_ && threshold_ >= floor_;
          bound = strict ? threshold_ : floor_;
        }
      }
    }
  }

  // The best min(K, admitted) candidates, sorted.
  std::vector<Candidate>& finish() {
    prune();
    std::sort(buf_.begin(), buf_.end(), ranks_before);
    return buf_;
  }

 private:
  bool admits(float value) const { return (!full_ || value > threshold_) && value >= floor_; }

  void push(Candidate c) {
    buf_.push_back(c);
    if (static_cast<int64_t>(buf_.size()) == capacity_) prune();
  }

  void prune() {
    if (static_cast<int64_t>(buf_.size()) < k_) return;
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), ranks_before);
    buf_.resize(k_);
    threshold_ = buf_[k_ - 1].value;
    full_ = true;
  }

  int64_t k_;
  int64_t capacity_;
  float floor_;
  std::vector<Candidate> buf_;
  bool full_ = false;
  float threshold_ = kNegInf;
};

// Sums 2^u and 2^u u over the logits [lo, hi) of a row, u = offset_log2<kFma>(x, mv) clamped at
// -126 (one max, no compare and blend): a logit more than 87 below the max, or -inf, then adds
// 2^-126 to d and -126 * 2^-126 to t, which no fp32 sum that holds the max's own 1 can
// register, and never 0 * -inf = NaN. Two accumulator pairs halve the add chains.
template <bool kFma, typename T>
std::pair<float, float> exp_sums(const T* row, int64_t lo, int64_t hi, float mv_scalar) {
  alignas(64) T scratch[kBlock];
  const VecF mv = splat(mv_scalar), lowest = splat(kExp2Lowest);
  VecF d0 = splat(0.0f), t0 = d0, d1 = d0, t1 = d0;
  for (int64_t b = lo; b < hi; b += kBlock) {
    const int64_t n = std::min(kBlock, hi - b);
    int64_t padded;
    const T* x = whole_vectors(row + b, n, scratch, padded);
    int64_t i = 0;
    for (; i + 2 * kLanes <= padded; i += 2 * kLanes) {
      const VecF u0 = vmax(offset_log2<kFma>(load(x + i), mv), lowest);
      const VecF u1 = vmax(offset_log2<kFma>(load(x + i + kLanes), mv), lowest);
      const VecF e0 = vexp2_in_range(u0), e1 = vexp2_in_range(u1);
      d0 += e0;
      t0 += e0 * u0;
      d1 += e1;
      t1 += e1 * u1;
    }
    if (i < padded) {
      const VecF u0 = vmax(offset_log2<kFma>(load(x + i), mv), lowest);
      const VecF e0 = vexp2_in_range(u0);
      d0 += e0;
      t0 += e0 * u0;
    }
  }
  return {hsum(d0 + d1), hsum(t0 + t1)};
}

// Pass 1 over logits [lo, hi) of one row, in two sweeps of its blocks (the second from L2):
//   1. the max of every block, into block_max (the slice's first block first), hence the
//      slice's max m (the softmax needs no running rescale);
//   2. one exp per logit for the online-softmax sums (exp_sums).
template <typename T>
SoftmaxStats scan_row_slice(const T* row, int64_t lo, int64_t hi, float* block_max) {
  alignas(64) T scratch[kBlock];
  const int64_t blocks = (hi - lo + kBlock - 1) / kBlock;
  float m = kNegInf;
  for (int64_t j = 0; j < blocks; ++j) {
    const int64_t b = lo + j * kBlock, n = std::min(kBlock, hi - b);
    int64_t padded;
    const T* x = whole_vectors(row + b, n, scratch, padded);
    block_max[j] = max_of(x, padded);
    m = std::max(m, block_max[j]);
  }
  if (m == kNegInf) return {m, 0.0f, 0.0f};
  // In base 2: u = (x - m) log2(e), e = 2^u, t += e u ln 2. u must hold fp32 precision for
  // the x near m that carry the sums, also where |x| is 1e4 and fp32's grid 1e-3 wide. Where
  // the target has FMA, u = x log2(e) - mv in one rounding: mv, m log2(e) rounded, is off by
  // err, the same for every u, and d and t are corrected for it after the sweep (uncorrected,
  // every log-prob feature was off by up to 5e-4). Where |m log2(e)| >= 2^22, err could reach
  // 2^-1 and beyond (2^8 at 5e9, where 2^err overflowed: alpha was NaN), and elsewhere than FMA
  // targets: x - m first, exact near m (Sterbenz), one instruction more.
  const float m_log2e = m * kLog2e;
  const bool fma = kHasFma && std::fabs(m_log2e) < 0x1p22f;
  const float err = fma ? std::fma(m, kLog2e, -m_log2e) : 0.0f;
  const auto [de, te] = fma ? exp_sums<true>(row, lo, hi, m_log2e) : exp_sums<false>(row, lo, hi, m);
  // Each u was (x - m) log2(e) + err: d and the sum of e u scaled back by 2^-err.
  const float back = std::exp2(-err);
  const float d = de * back;
  return {m, d, (te * back - err * d) * kLn2};
}

// The row's top-K (sorted) from its block maxima: the K-th largest block max is at most the
// K-th best logit (K blocks each hold a logit >= it), so only the blocks whose max reaches
// it, K of them unless maxima tie, are offered to the collector, and every other block costs
// one compare. Offered in id order with a running threshold instead, a third of the blocks of
// a random row get in (84 of 251 at V = 128256, K = 16), and comparing their logits cost as
// much as the exps. Called right after pass 1 (the row's blocks are still in cache).
template <typename T>
std::vector<Candidate> row_topk(const T* row, int64_t vocab, const float* block_max, int64_t blocks, int k) {
  float floor = kNegInf;
  if (blocks >= k) {
    std::vector<float> maxima(block_max, block_max + blocks);
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<float>());
    floor = maxima[k - 1];
  }
  alignas(64) T scratch[kBlock];
  TopKCollector topk(k, floor);
  for (int64_t j = 0; j < blocks; ++j) {
    if (!(block_max[j] >= floor)) continue;
    const int64_t b = j * kBlock, n = std::min(kBlock, vocab - b);
    int64_t padded;
    const T* x = whole_vectors(row + b, n, scratch, padded);
    topk.offer_block(x, n, b, block_max[j]);
  }
  return std::move(topk.finish());
}

// Per-row constants subtracted from the logits before the mix: z = ((x_b - c_b) + alpha (x_r -
// c_r)) / T. Any constants give the same token and log-probs in exact arithmetic (they shift z by
// a per-row constant), but fp32 rounds z on the grid of |z|: for the tokens near the top, z must
// be small, as the reference's s = lp_b + alpha lp_r is, or at logits near 1e4, or at a low T
// (s / T at T = 1e-3 from logits near 30), the grid is 1e-3 wide and greedy tokens, samples and
// log-probs moved off the reference.
struct Offsets {
  float b = 0.0f, r = 0.0f;
};

// z for kLanes tokens. The reward term is 0 when alpha == 0 (spec choice: 0 * -inf is not
// NaN). One function for every pass and for single tokens, so all see the same values.
TARO_INLINE VecF mix(VecF xb, VecF xr, float alpha, Offsets c, float inv_t) {
  // Loop-invariant branches (unswitched out of the callers' loops): x - 0 is x, so skipping the
  // subtractions for GenARM's raw scores changes no value, and saves a GenARM greedy pass two of
  // its five vector operations per load pair.
  if (c.b == 0.0f && c.r == 0.0f) return (alpha == 0.0f ? xb : fmadd(splat(alpha), xr, xb)) * inv_t;
  const VecF b = xb - c.b;
  if (alpha == 0.0f) return b * inv_t;
  return fmadd(splat(alpha), xr - c.r, b) * inv_t;
}

// Rows mix the raw logits (c = 0) where the target has FMA and the top scores are small: each z then
// rounds once before the 1 / T scale, so a token's z is within 1.5 units of fp32's last place at
// |z|, 4.6e-5 at |z| <= 256, inside the spec's 1e-4, and the pass has two subtractions fewer per
// vector (TARo's bf16 step was 6% slower with them). TARo knows its maxima before pass 2 and
// decides from them: where |m_b| + alpha |m_r| <= 256 T, a raw z is within 256 of the z relative to
// the maxima, so it is never coarser than the limit where that one is not (a top token far below
// both maxima is as coarse either way, in the reference too). GenARM (one read, no pass for the
// maxima) mixes raw first and a row whose max z is larger again with its row maxima as c.
constexpr float kRawScoreLimit = 256.0f;

// Per-block results of pass 2 (the argmax is not tracked there: a compare-and-blend chain
// per vector would cost more than the whole pass; the greedy pick rescans one block).
struct BlockScore {
  float max;  // max of z over the block (-inf if every z is -inf)
  float sum;  // sum exp(z - max) (0 unless masses were asked for)
};

// Router MLP on one row's features: alpha = alpha_max * sigmoid(w2 . silu(W1 x + b1) + b2).
float router_alpha(const RouterWeights& w, const std::vector<float>& x) {
  const int64_t in = static_cast<int64_t>(x.size());
  float u = *w.b2;
  for (int32_t j = 0; j < w.hidden; ++j) {
    const float* wrow = w.w1 + j * in;
    VecF acc = splat(0.0f);
    int64_t i = 0;
    for (; i + kLanes <= in; i += kLanes) acc += load(wrow + i) * load(x.data() + i);
    float pre = hsum(acc) + w.b1[j];
    for (; i < in; ++i) pre += wrow[i] * x[i];
    u += w.w2[j] * (pre / (1.0f + std::exp(-pre)));
  }
  return w.alpha_max / (1.0f + std::exp(-u));
}

void append_embedding_rows(const RouterWeights& w, const std::vector<Candidate>& top, std::vector<float>& x) {
  const int64_t d = w.embed_dim;
  for (const Candidate& c : top) {
    const int64_t off = static_cast<int64_t>(c.id) * d;
    if (w.embed_dtype == DType::kBFloat16) {
      const uint16_t* e = static_cast<const uint16_t*>(w.embed) + off;
      for (int64_t i = 0; i < d; ++i) {
        const uint32_t bits = static_cast<uint32_t>(e[i]) << 16;
        float f;
        std::memcpy(&f, &bits, sizeof f);
        x.push_back(f);
      }
    } else {
      const float* e = static_cast<const float*>(w.embed) + off;
      x.insert(x.end(), e, e + d);
    }
  }
}

// One call of the step for logits element type T (float, Bf16 or Fp16).
template <typename T>
class StepRunner {
 public:
  StepRunner(const StepParams& p, int num_threads)
      : p_(p),
        batch_(p.batch),
        vocab_(p.vocab_size),
        blocks_((p.vocab_size + kBlock - 1) / kBlock),
        router_(!p.use_alpha_override),
        // Sampling and any log-prob need the normaliser of z; a greedy token alone does not.
        needs_mass_(p.temperature > 0.0f || p.token_logprobs != nullptr || p.logprobs != nullptr),
        inv_t_(p.temperature > 0.0f ? 1.0f / p.temperature : 1.0f),
        base_(static_cast<const T*>(p.base_logits)),
        reward_(static_cast<const T*>(p.reward_logits)) {
    // No more threads than the work feeds. Whole rows per item when they spread evenly (or
    // there are many); otherwise rows are cut into chunks of kChunkBlocks blocks.
    const int64_t by_size = std::max<int64_t>(1, batch_ * vocab_ / kMinItemLogits);
    threads_ = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, by_size)));
    const bool whole_rows = threads_ == 1 || batch_ % threads_ == 0 || batch_ >= 4 * threads_;
    chunks_ = whole_rows ? 1 : (blocks_ + kChunkBlocks - 1) / kChunkBlocks;
    alpha_.assign(batch_, p.alpha_override);
    offsets_.resize(batch_);
    scores_.resize(batch_ * blocks_);
    if (router_) {
      part_b_.resize(batch_ * chunks_);
      part_r_.resize(batch_ * chunks_);
      block_max_b_.resize(batch_ * blocks_);
      block_max_r_.resize(batch_ * blocks_);
    }
  }

  void run() {
    const int64_t items = batch_ * chunks_;
    if (chunks_ == 1) {
      // Rows are independent: each item is a whole row, start to end.
      auto row_step = [this](int64_t row) {
        if (router_) {
          pass1(row);
          merge_row(row);
        } else if (!kHasFma) {
          use_row_maxima(row);
        }
        pass2(row);
        if (rescore(row)) {
          use_row_maxima(row);
          pass2(row);
        }
        pick_row(row);
        if (p_.logprobs != nullptr) write_logprobs(row);
      };
      cpu::parallel_for(batch_, threads_, row_step);
      return;
    }
    if (router_) {
      auto pass1_item = [this](int64_t item) { pass1(item); };
      cpu::parallel_for(items, threads_, pass1_item);
      for (int64_t row = 0; row < batch_; ++row) merge_row(row);
    } else if (!kHasFma) {
      for (int64_t row = 0; row < batch_; ++row) use_row_maxima(row);
    }
    auto pass2_item = [this](int64_t item) { pass2(item); };
    cpu::parallel_for(items, threads_, pass2_item);
    for (int64_t row = 0; row < batch_; ++row) {
      if (!rescore(row)) continue;  // rare (kRawScoreLimit): on the calling thread
      use_row_maxima(row);
      for (int64_t c = 0; c < chunks_; ++c) pass2(row * chunks_ + c);
    }
    for (int64_t row = 0; row < batch_; ++row) pick_row(row);
    if (p_.logprobs != nullptr) {
      auto logprobs_item = [this](int64_t item) { write_logprobs(item); };
      cpu::parallel_for(items, threads_, logprobs_item);
    }
  }

 private:
  struct Slice {
    int64_t row, lo, hi;
  };

  // Work item -> (row, [lo, hi)); chunks are whole blocks, in id order within a row.
  Slice slice(int64_t item) const {
    const int64_t c = item % chunks_;
    return {item / chunks_, std::min(vocab_, c * kChunkBlocks * kBlock),
            chunks_ == 1 ? vocab_ : std::min(vocab_, (c + 1) * kChunkBlocks * kBlock)};
  }
  const T* base_row(int64_t row) const { return base_ + row * p_.base_stride; }
  const T* reward_row(int64_t row) const { return reward_ + row * p_.reward_stride; }

  // z over the block [lo, lo + n) of a row, n <= kBlock: calls each(i, z[i, i + kLanes)) for
  // i = 0, kLanes, ... below n rounded up to kLanes (lanes past n hold -inf); returns that bound.
  template <typename F>
  int64_t for_each_mixed(int64_t row, int64_t lo, int64_t n, F&& each) const {
    alignas(64) T scratch_b[kBlock];
    alignas(64) T scratch_r[kBlock];
    const float a = alpha_[row];
    int64_t padded;
    const T* xb = whole_vectors(base_row(row) + lo, n, scratch_b, padded);
    const T* xr = a != 0.0f ? whole_vectors(reward_row(row) + lo, n, scratch_r, padded) : xb;
    const Offsets c = offsets_[row];
    for (int64_t i = 0; i < padded; i += kLanes) each(i, mix(load(xb + i), load(xr + i), a, c, inv_t_));
    return padded;
  }

  // z of one token (the same arithmetic as `mix` over a vector).
  float mixed_one(int64_t row, int64_t id) const {
    const float a = alpha_[row];
    const float r = a != 0.0f ? to_float(reward_row(row)[id]) : 0.0f;
    return mix(splat(to_float(base_row(row)[id])), splat(r), a, offsets_[row], inv_t_)[0];
  }

  // The largest logit of a row, 0 if none is finite (the offset of a row with nothing to pick).
  float max_logit(const T* row) const {
    alignas(64) T scratch[kBlock];
    float m = kNegInf;
    for (int64_t b = 0; b < vocab_; b += kBlock) {
      int64_t padded;
      const T* x = whole_vectors(row + b, std::min(kBlock, vocab_ - b), scratch, padded);
      m = std::max(m, max_of(x, padded));
    }
    return m != kNegInf ? m : 0.0f;
  }

  // A GenARM row's offsets: its maxima (a read of both rows, from cache after pass 2).
  void use_row_maxima(int64_t row) {
    offsets_[row] = {max_logit(base_row(row)), alpha_[row] != 0.0f ? max_logit(reward_row(row)) : 0.0f};
  }

  // True when a GenARM row mixed with c = 0 must be mixed again with its maxima (kRawScoreLimit).
  bool rescore(int64_t row) const {
    if (router_ || !kHasFma) return false;
    const float zmax = row_max(row);
    return zmax != kNegInf && !(std::fabs(zmax) <= kRawScoreLimit);
  }

  void pass1(int64_t item) {
    const Slice s = slice(item);
    const int64_t first_block = s.row * blocks_ + s.lo / kBlock;
    part_b_[item] = scan_row_slice(base_row(s.row), s.lo, s.hi, &block_max_b_[first_block]);
    part_r_[item] = scan_row_slice(reward_row(s.row), s.lo, s.hi, &block_max_r_[first_block]);
  }

  // Slice partials and block maxima -> the row's log-normalisers, entropies, top-K lists and alpha.
  void merge_row(int64_t row) {
    const SoftmaxStats* pb = &part_b_[row * chunks_];
    const SoftmaxStats* pr = &part_r_[row * chunks_];
    SoftmaxStats sb, sr;
    for (int64_t c = 0; c < chunks_; ++c) {
      sb.merge(pb[c]);
      sr.merge(pr[c]);
    }
    const int k = p_.k;
    const std::vector<Candidate> top_b = row_topk(base_row(row), vocab_, &block_max_b_[row * blocks_], blocks_, k);
    const std::vector<Candidate> top_r = row_topk(reward_row(row), vocab_, &block_max_r_[row * blocks_], blocks_, k);
    const RouterWeights& w = p_.router;
    std::vector<float> x;
    x.reserve(router_input_dim(k, w.embed_dim));
    for (const Candidate& c : top_b) x.push_back(std::max(sb.logprob(c.value), kFeatureLogprobFloor));
    for (const Candidate& c : top_r) x.push_back(std::max(sr.logprob(c.value), kFeatureLogprobFloor));
    x.push_back(sb.entropy());
    x.push_back(sr.entropy());
    append_embedding_rows(w, top_b, x);
    append_embedding_rows(w, top_r, x);
    const float a = router_alpha(w, x);
    alpha_[row] = a;
    // The raw logits where the top scores are small enough (kRawScoreLimit: |z| there is at most
    // (|m_b| + alpha |m_r|) / T), as GenARM's first pass; else relative to the maxima.
    const float mb = sb.m != kNegInf ? sb.m : 0.0f, mr = sr.m != kNegInf ? sr.m : 0.0f;
    const bool raw = kHasFma && (std::fabs(mb) + a * std::fabs(mr)) * inv_t_ <= kRawScoreLimit;
    offsets_[row] = raw ? Offsets{} : Offsets{mb, mr};
  }

  // Per block of the item: max of z and (needs_mass_) sum exp(z - max). Four max chains
  // (z is stored only when the masses need it), so the loop runs at the loads' rate.
  void pass2(int64_t item) {
    const Slice s = slice(item);
    alignas(64) float z[kBlock];
    alignas(64) T scratch_b[kBlock];
    alignas(64) T scratch_r[kBlock];
    const float a = alpha_[s.row];
    const Offsets off = offsets_[s.row];
    for (int64_t lo = s.lo; lo < s.hi; lo += kBlock) {
      const int64_t n = std::min(kBlock, s.hi - lo);
      int64_t padded;
      const T* xb = whole_vectors(base_row(s.row) + lo, n, scratch_b, padded);
      const T* xr = a != 0.0f ? whole_vectors(reward_row(s.row) + lo, n, scratch_r, padded) : xb;
      VecF m[4] = {splat(kNegInf), splat(kNegInf), splat(kNegInf), splat(kNegInf)};
      int64_t i = 0;
      for (; i + 4 * kLanes <= padded; i += 4 * kLanes) {
        for (int c = 0; c < 4; ++c) {
          const VecF v = mix(load(xb + i + c * kLanes), load(xr + i + c * kLanes), a, off, inv_t_);
          if (needs_mass_) std::memcpy(z + i + c * kLanes, &v, sizeof v);
          m[c] = vmax(m[c], v);
        }
      }
      for (; i < padded; i += kLanes) {
        const VecF v = mix(load(xb + i), load(xr + i), a, off, inv_t_);
        if (needs_mass_) std::memcpy(z + i, &v, sizeof v);
        m[0] = vmax(m[0], v);
      }
      const float bmax = hmax(vmax(vmax(m[0], m[1]), vmax(m[2], m[3])));
      float sum = 0.0f;
      if (needs_mass_ && bmax != kNegInf) {
        VecF acc = splat(0.0f);
        const VecF mv = splat(bmax);
        for (int64_t j = 0; j < padded; j += kLanes) acc += vexp(load(z + j) - mv);
        sum = hsum(acc);
      }
      scores_[s.row * blocks_ + lo / kBlock] = {bmax, sum};
    }
  }

  // The first id of block b whose z equals zmax (the block's max), recomputed with the same
  // arithmetic as pass 2; the block's first id if every z there is -inf.
  int64_t first_argmax(int64_t row, int64_t b, float zmax) const {
    const int64_t lo = b * kBlock, n = std::min(kBlock, vocab_ - lo);
    int64_t first = n;
    for_each_mixed(row, lo, n, [&](int64_t i, VecF v) {
      if (first < n) return;
      const uint32_t hit = lanes_at_least(v, zmax);
      if (hit != 0) first = i + __builtin_ctz(hit);
    });
    return lo + (first < n ? first : 0);
  }

  // The block's share of sum exp(z - zmax), with the exp the rescan uses, so a block of
  // positive mass always holds a token of positive probability (its argmax).
  static double block_mass(const BlockScore& s, float zmax) {
    return s.sum > 0.0f ? static_cast<double>(s.sum) * static_cast<double>(exp_scalar(s.max - zmax)) : 0.0;
  }

  float row_max(int64_t row) const {
    const BlockScore* sc = &scores_[row * blocks_];
    float zmax = kNegInf;
    for (int64_t b = 0; b < blocks_; ++b) zmax = std::max(zmax, sc[b].max);
    return zmax;
  }

  // logsumexp(z) of a row from its block scores.
  float log_normaliser(int64_t row) const {
    const BlockScore* sc = &scores_[row * blocks_];
    const float zmax = row_max(row);
    double total = 0.0;
    for (int64_t b = 0; b < blocks_; ++b) total += block_mass(sc[b], zmax);
    return zmax + static_cast<float>(std::log(total));
  }

  // Token, alpha and (when asked) the token's log-prob for one row.
  void pick_row(int64_t row) {
    const BlockScore* sc = &scores_[row * blocks_];
    const float zmax = row_max(row);
    int64_t token = 0;
    if (p_.temperature == 0.0f) {
      // Ties to the lowest id: the first block reaching the max holds it.
      int64_t b = 0;
      while (b + 1 < blocks_ && sc[b].max != zmax) ++b;
      token = first_argmax(row, b, zmax);
    } else {
      double total = 0.0;
      for (int64_t b = 0; b < blocks_; ++b) total += block_mass(sc[b], zmax);
      token = sample(row, sc, zmax, static_cast<double>(p_.uniform[row]) * total);
    }
    p_.tokens[row] = token;
    p_.alpha[row] = alpha_[row];
    if (p_.token_logprobs != nullptr) p_.token_logprobs[row] = mixed_one(row, token) - log_normaliser(row);
  }

  // Smallest id whose inclusive prefix sum of p = exp(z - zmax) exceeds `threshold`; if
  // rounding leaves none, the last id with p > 0. Block masses locate the block; only that
  // block is recomputed and scanned, accumulating in double token by token, so the returned
  // id always has p > 0 and lies below V.
  int64_t sample(int64_t row, const BlockScore* sc, float zmax, double threshold) const {
    alignas(64) float p[kBlock];
    auto block_probs = [&](int64_t b) {
      const int64_t lo = b * kBlock, n = std::min(kBlock, vocab_ - lo);
      for_each_mixed(row, lo, n, [&](int64_t i, VecF v) {
        const VecF e = vexp(v - zmax);
        std::memcpy(p + i, &e, sizeof e);
      });
      return n;
    };
    double cum = 0.0;
    int64_t last_positive_block = -1;
    for (int64_t b = 0; b < blocks_; ++b) {
      const double mass = block_mass(sc[b], zmax);
      if (!(mass > 0.0)) continue;
      last_positive_block = b;
      if (cum + mass <= threshold) {
        cum += mass;
        continue;
      }
      const int64_t n = block_probs(b);
      for (int64_t i = 0; i < n; ++i) {
        cum += p[i];
        if (p[i] > 0.0f && cum > threshold) return b * kBlock + i;
      }
    }
    if (last_positive_block < 0) return 0;  // no finite score at all (possible only unchecked)
    int64_t i = block_probs(last_positive_block) - 1;
    while (i > 0 && !(p[i] > 0.0f)) --i;
    return last_positive_block * kBlock + i;
  }

  // logprobs = z - logsumexp(z), straight into the output row.
  void write_logprobs(int64_t item) const {
    const Slice s = slice(item);
    const float norm = log_normaliser(s.row);
    float* out = p_.logprobs + s.row * vocab_;
    for (int64_t lo = s.lo; lo < s.hi; lo += kBlock) {
      const int64_t n = std::min(kBlock, s.hi - lo);
      for_each_mixed(s.row, lo, n, [&](int64_t i, VecF v) {
        const VecF lp = v - norm;
        std::memcpy(out + lo + i, &lp, sizeof(float) * std::min<int64_t>(kLanes, n - i));
      });
    }
  }

  const StepParams& p_;
  const int64_t batch_, vocab_, blocks_;
  const bool router_, needs_mass_;
  const float inv_t_;
  const T* base_;
  const T* reward_;
  int threads_ = 1;
  int64_t chunks_ = 1;
  std::vector<float> alpha_;                   // [B]
  std::vector<Offsets> offsets_;               // [B] the c of `mix`: row maxima, or 0 (raw)
  std::vector<SoftmaxStats> part_b_, part_r_;  // [B * chunks] (router only)
  std::vector<float> block_max_b_, block_max_r_;  // [B, blocks] max logit per block (router only)
  std::vector<BlockScore> scores_;              // [B, blocks]
};

bool params_valid(const StepParams& p) {
  if (p.batch < 0 || p.vocab_size < 1 || p.vocab_size > std::numeric_limits<int32_t>::max()) return false;
  if (p.batch == 0) return true;
  if (!p.base_logits || !p.reward_logits || !p.tokens || !p.alpha) return false;
  // Rows may overlap (stride 0 for a broadcast batch): the kernel only reads them.
  if (p.base_stride < 0 || p.reward_stride < 0) return false;
  if (!(p.temperature >= 0.0f) || (p.temperature > 0.0f && !p.uniform)) return false;
  if (p.use_alpha_override) return p.alpha_override >= 0.0f;
  const RouterWeights& w = p.router;
  return p.k >= 1 && p.k <= p.vocab_size && w.embed && w.w1 && w.b1 && w.w2 && w.b2 && w.hidden >= 1 &&
         w.embed_dim >= 1 && (w.embed_dtype == DType::kFloat32 || w.embed_dtype == DType::kBFloat16);
}

}  // namespace

int taro_step_cpu(const StepParams& params, int num_threads) {
  if (!params_valid(params)) return 1;
  if (params.batch == 0) return 0;
  const int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
  switch (params.logits_dtype) {
    case DType::kFloat32: StepRunner<float>(params, threads).run(); return 0;
    case DType::kBFloat16: StepRunner<Bf16>(params, threads).run(); return 0;
    case DType::kFloat16: StepRunner<Fp16>(params, threads).run(); return 0;
  }
  return 2;
}

}  // namespace taro
