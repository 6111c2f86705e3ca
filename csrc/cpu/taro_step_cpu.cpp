// The fused TARo decode step on the CPU (../../shared/TARO_SPEC.md), torch-free.
//
// One call, one OpenMP parallel region. Per row:
//
//   pass 1: for both logits rows, per block of kBlock logits: block max, the online-softmax
//           partial (max m, sum-exp d, entropy term t) and a top-K candidate list guarded
//           by a running K-th-best threshold, so that after the first few thousand logits
//           almost every block is skipped by the top-K;
//   merge:  partials -> log-normalisers, entropies, top-K lists; router MLP -> alpha;
//   pass 2: per block, the mixed score z = (lp_b + alpha lp_r) / T, its block max, block
//           sum of exp(z - max) and first argmax, kept in a small [B, blocks] table;
//   pick:   greedy from the block maxima; sampling walks the block sums in id order and
//           rescans only the one block where u * total is crossed;
//   pass 3: only when logprobs are requested, z - logsumexp(z).
//
// Threads take whole rows when the batch spreads evenly over them (no barrier at all);
// otherwise (B smaller than, or not a multiple of, the thread count) rows are cut into
// slices of whole blocks, with per-slice partials merged after a barrier.
//
// Inner loops are written for the auto-vectoriser (-O3 -march=native -fno-trapping-math;
// without the last flag GCC will not if-convert the clamps of the exp and leaves it
// scalar, about 3x slower): `omp simd` reductions, a polynomial exp over float lanes, and
// branch-free fp16/bf16 -> fp32 conversion by bit manipulation.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "../taro_step.h"

namespace taro {
namespace {

constexpr int64_t kBlock = 512;      // logits per block: the unit of passes 1 and 2
constexpr int64_t kSubBlock = 64;    // top-K threshold check granularity inside a block
constexpr int64_t kMinItemLogits = 8192;  // below this many logits per thread, use fewer threads
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// exp(x) for x below this is flushed to 0 (the fp32 result would be denormal).
constexpr float kExpLowest = -87.33654f;
// Entropy terms use max(x - m, kEntropyClamp): exp of it is 0 and 0 * it is 0, not NaN at -inf.
constexpr float kEntropyClamp = -104.0f;

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// IEEE half -> float without branches (vectorisable). Normal and subnormal halves: place
// exponent and mantissa in the low float bits and rescale by 2^112; inf/NaN: force the
// exponent to all ones.
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  uint32_t bits = float_to_bits(bits_to_float(magnitude << 13) * 0x1p112f);
  bits |= magnitude >= 0x7c00u ? 0x7f800000u : 0u;
  return bits_to_float(bits | sign);
}

struct Bf16 { uint16_t bits; };
struct Fp16 { uint16_t bits; };
inline float to_float(float x) { return x; }
inline float to_float(Bf16 x) { return bf16_to_float(x.bits); }
inline float to_float(Fp16 x) { return fp16_to_float(x.bits); }

// exp(x) in fp32 (Cephes polynomial, about 1 ulp), 0 for x < kExpLowest and for -inf.
// Inlined into `omp simd` loops, it vectorises; std::exp per element does not.
inline float exp_poly(float x) {
  const float xc = std::min(std::max(x, kExpLowest), 88.3762626647949f);
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r) + 1.0f;
  const int32_t e = static_cast<int32_t>(n);
  const float scale = bits_to_float(static_cast<uint32_t>(e + 127) << 23);
  return x < kExpLowest ? 0.0f : p * scale;
}

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
  float log_normaliser() const { return m + std::log(d); }
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

// Top-K over one slice scanned in increasing id order. Candidates go into a buffer of
// 2K (at least K + 64); when it fills, nth_element keeps the best K and the K-th value
// becomes the admission threshold. A later logit equal to the threshold has a higher id
// than everything kept, so it ranks below the K-th and admission is strict (x > thr).
class TopKCollector {
 public:
  explicit TopKCollector(int k) : k_(k), capacity_(std::max<int64_t>(2 * k, k + 64)) {
    buf_.reserve(capacity_);
  }

  // Block max `bmax` lets the caller skip blocks that cannot contribute.
  void offer_block(const float* x, int64_t n, int64_t first_id, float bmax) {
    if (full_ && !(bmax > threshold_)) return;
    for (int64_t s = 0; s < n; s += kSubBlock) {
      const int64_t e = std::min(n, s + kSubBlock);
      if (full_) {
        float smax = kNegInf;
#pragma omp simd reduction(max : smax)
        for (int64_t i = s; i < e; ++i) smax = std::max(smax, x[i]);
        if (!(smax > threshold_)) continue;
      }
      for (int64_t i = s; i < e; ++i) {
        if (!full_ || x[i] > threshold_) push({x[i], static_cast<int32_t>(first_id + i)});
      }
    }
  }

  // The best min(K, seen) candidates, sorted.
  std::vector<Candidate>& finish() {
    prune();
    std::sort(buf_.begin(), buf_.end(), ranks_before);
    return buf_;
  }

 private:
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
  std::vector<Candidate> buf_;
  bool full_ = false;
  float threshold_ = kNegInf;
};

// Pass-1 results of one slice of one logits row.
struct SlicePartial {
  SoftmaxStats stats;
  std::vector<Candidate> topk;  // sorted, at most K
};

// Per-block results of pass 2.
struct BlockScore {
  float max;    // max of z over the block (-inf if every z is -inf)
  float sum;    // sum exp(z - max)
  int32_t arg;  // first id in the block with z == max
};

// The block's share of sum exp(z - zmax), with the same exp as the elements it sums, so a
// block of positive mass always holds an element of positive probability (its argmax).
inline double block_mass(const BlockScore& s, float zmax) {
  return s.sum > 0.0f ? static_cast<double>(s.sum) * static_cast<double>(exp_poly(s.max - zmax)) : 0.0;
}

template <typename T>
void load_block(const T* src, int64_t n, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// Pass 1 over logits [lo, hi) of one row: softmax partial and (k > 0) top-K.
template <typename T>
SlicePartial scan_row_slice(const T* row, int64_t lo, int64_t hi, int k, float* buf) {
  SlicePartial out;
  TopKCollector topk(std::max(k, 1));
  for (int64_t b = lo; b < hi; b += kBlock) {
    const int64_t n = std::min(kBlock, hi - b);
    const float* x;
    if constexpr (std::is_same_v<T, float>) {
      x = row + b;
    } else {
      load_block(row + b, n, buf);
      x = buf;
    }
    float bmax = kNegInf;
#pragma omp simd reduction(max : bmax)
    for (int64_t i = 0; i < n; ++i) bmax = std::max(bmax, x[i]);
    if (bmax == kNegInf) {
      // All masked: nothing for the softmax, but the top-K may still need -inf entries.
      if (k > 0) topk.offer_block(x, n, b, bmax);
      continue;
    }
    float d = 0.0f, t = 0.0f;
#pragma omp simd reduction(+ : d, t)
    for (int64_t i = 0; i < n; ++i) {
      const float y = std::max(x[i] - bmax, kEntropyClamp);
      const float e = exp_poly(y);
      d += e;
      t += e * y;
    }
    out.stats.merge({bmax, d, t});
    if (k > 0) topk.offer_block(x, n, b, bmax);
  }
  if (k > 0) out.topk = std::move(topk.finish());
  return out;
}

// The mixed score z = (lp_b + alpha lp_r) * inv_t over logits [b, b + n) of one row pair
// into z. One function for passes 2 and 3 and the sampling rescan, so all three see the
// same values. The reward term is 0 when alpha == 0 (spec choice: 0 * -inf is not NaN).
template <typename T>
void mixed_block(const T* xb, const T* xr, int64_t n, float lse_b, float lse_r, float alpha,
                 float inv_t, float* z) {
  if (alpha == 0.0f) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) z[i] = (to_float(xb[i]) - lse_b) * inv_t;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      z[i] = ((to_float(xb[i]) - lse_b) + alpha * (to_float(xr[i]) - lse_r)) * inv_t;
    }
  }
}

// Router MLP on one row's features: alpha = alpha_max * sigmoid(w2 . silu(W1 x + b1) + b2).
float router_alpha(const RouterWeights& w, const std::vector<float>& x) {
  const int64_t in = static_cast<int64_t>(x.size());
  float u = *w.b2;
  for (int32_t j = 0; j < w.hidden; ++j) {
    const float* wrow = w.w1 + j * in;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < in; ++i) acc += wrow[i] * x[i];
    const float pre = acc + w.b1[j];
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
      for (int64_t i = 0; i < d; ++i) x.push_back(bf16_to_float(e[i]));
    } else {
      const float* e = static_cast<const float*>(w.embed) + off;
      x.insert(x.end(), e, e + d);
    }
  }
}

// Merge sorted per-slice top-K lists (slices are disjoint id ranges) into the row's top-K.
std::vector<Candidate> merge_topk(const SlicePartial* parts, int64_t count, int k) {
  std::vector<Candidate> all;
  for (int64_t c = 0; c < count; ++c) all.insert(all.end(), parts[c].topk.begin(), parts[c].topk.end());
  std::partial_sort(all.begin(), all.begin() + k, all.end(), ranks_before);
  all.resize(k);
  return all;
}

// What pass 2 and the pick need of a row: both log-normalisers and alpha.
struct RowState {
  float lse_b = 0.0f, lse_r = 0.0f, alpha = 0.0f;
};

// One call of the step for logits element type T (float, Bf16 or Fp16).
template <typename T>
class StepRunner {
 public:
  StepRunner(const StepParams& p, int num_threads)
      : p_(p),
        batch_(p.batch),
        vocab_(p.vocab_size),
        blocks_((p.vocab_size + kBlock - 1) / kBlock),
        topk_(!p.use_alpha_override),
        // With alpha_override == 0 the reward row never enters the score: skip it entirely.
        needs_reward_(!p.use_alpha_override || p.alpha_override != 0.0f),
        inv_t_(p.temperature > 0.0f ? 1.0f / p.temperature : 1.0f),
        base_(static_cast<const T*>(p.base_logits)),
        reward_(static_cast<const T*>(p.reward_logits)) {
    // No more threads than the work feeds. Whole rows per thread when they spread evenly
    // (or there are many); otherwise split rows into chunks_per_row = threads / gcd(B,
    // threads) slices, which makes B * chunks_per_row a multiple of the thread count.
    const int64_t by_size = std::max<int64_t>(1, batch_ * vocab_ / kMinItemLogits);
    threads_ = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, by_size)));
    const bool whole_rows = batch_ % threads_ == 0 || batch_ >= 4 * threads_;
    chunks_ = whole_rows ? 1 : std::min<int64_t>(blocks_, threads_ / std::gcd<int64_t>(batch_, threads_));
    items_ = batch_ * chunks_;
    part_b_.resize(items_);
    part_r_.resize(items_);
    rows_.resize(batch_);
    scores_.resize(batch_ * blocks_);
  }

  void run() {
    if (chunks_ == 1) {
      // Rows are independent: no barrier, and dynamic scheduling lets an idle thread take
      // the rows of a descheduled one.
#pragma omp parallel num_threads(threads_)
      {
        alignas(64) float scratch[kBlock];
#pragma omp for schedule(dynamic, 1)
        for (int64_t row = 0; row < batch_; ++row) {
          pass1(row, scratch);
          publish(row, merge_row(row));
          pass2(row, rows_[row], scratch);
          pick_row(row, scratch);
          if (p_.logprobs != nullptr) write_logprobs(row);
        }
      }
      return;
    }
    // Split rows: two barriers. The merge and the router MLP are cheap next to a barrier,
    // so every slice of a row recomputes them and the row's first slice publishes them.
#pragma omp parallel num_threads(threads_)
    {
      alignas(64) float scratch[kBlock];
#pragma omp for schedule(static)
      for (int64_t item = 0; item < items_; ++item) pass1(item, scratch);
#pragma omp for schedule(static)
      for (int64_t item = 0; item < items_; ++item) {
        const RowState state = merge_row(item / chunks_);
        if (item % chunks_ == 0) publish(item / chunks_, state);
        pass2(item, state, scratch);
      }
#pragma omp for schedule(static)
      for (int64_t item = 0; item < items_; ++item) {
        if (item % chunks_ == 0) pick_row(item / chunks_, scratch);
        if (p_.logprobs != nullptr) write_logprobs(item);
      }
    }
  }

 private:
  struct Slice {
    int64_t row, lo, hi;
  };

  // Work item -> (row, [lo, hi)); slices are whole blocks, in id order within a row.
  Slice slice(int64_t item) const {
    const int64_t c = item % chunks_;
    return {item / chunks_, std::min(vocab_, (c * blocks_ / chunks_) * kBlock),
            std::min(vocab_, ((c + 1) * blocks_ / chunks_) * kBlock)};
  }
  const T* base_row(int64_t row) const { return base_ + row * p_.base_stride; }
  const T* reward_row(int64_t row) const { return reward_ + row * p_.reward_stride; }

  // z over [lo, lo + n) of one row; see mixed_block.
  void mixed(int64_t row, const RowState& st, int64_t lo, int64_t n, float* z) const {
    mixed_block(base_row(row) + lo, reward_row(row) + lo, n, st.lse_b, st.lse_r, st.alpha, inv_t_, z);
  }

  void pass1(int64_t item, float* scratch) {
    const Slice s = slice(item);
    const int k = topk_ ? p_.k : 0;
    part_b_[item] = scan_row_slice(base_row(s.row), s.lo, s.hi, k, scratch);
    if (needs_reward_) part_r_[item] = scan_row_slice(reward_row(s.row), s.lo, s.hi, k, scratch);
  }

  // Slice partials -> the row's log-normalisers, entropies, top-K lists and alpha.
  RowState merge_row(int64_t row) const {
    const SlicePartial* pb = &part_b_[row * chunks_];
    const SlicePartial* pr = &part_r_[row * chunks_];
    SoftmaxStats sb, sr;
    for (int64_t c = 0; c < chunks_; ++c) {
      sb.merge(pb[c].stats);
      sr.merge(pr[c].stats);
    }
    RowState st;
    st.lse_b = sb.log_normaliser();
    if (needs_reward_) st.lse_r = sr.log_normaliser();
    st.alpha = p_.alpha_override;
    if (topk_) {
      const int k = p_.k;
      const std::vector<Candidate> top_b = merge_topk(pb, chunks_, k);
      const std::vector<Candidate> top_r = merge_topk(pr, chunks_, k);
      const RouterWeights& w = p_.router;
      std::vector<float> x;
      x.reserve(router_input_dim(k, w.embed_dim));
      for (const Candidate& c : top_b) x.push_back(std::max(c.value - st.lse_b, kFeatureLogprobFloor));
      for (const Candidate& c : top_r) x.push_back(std::max(c.value - st.lse_r, kFeatureLogprobFloor));
      x.push_back(sb.entropy());
      x.push_back(sr.entropy());
      append_embedding_rows(w, top_b, x);
      append_embedding_rows(w, top_r, x);
      st.alpha = router_alpha(w, x);
    }
    return st;
  }

  void publish(int64_t row, const RowState& st) {
    rows_[row] = st;
    p_.alpha[row] = st.alpha;
  }

  // Per block: max of z, sum exp(z - max) and the first argmax.
  void pass2(int64_t item, const RowState& st, float* z) {
    const Slice s = slice(item);
    for (int64_t lo = s.lo; lo < s.hi; lo += kBlock) {
      const int64_t n = std::min(kBlock, s.hi - lo);
      mixed(s.row, st, lo, n, z);
      float zmax = kNegInf;
#pragma omp simd reduction(max : zmax)
      for (int64_t i = 0; i < n; ++i) zmax = std::max(zmax, z[i]);
      float sum = 0.0f;
      int64_t arg = 0;
      if (zmax != kNegInf) {
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) sum += exp_poly(z[i] - zmax);
        while (z[arg] != zmax) ++arg;
      }
      scores_[s.row * blocks_ + lo / kBlock] = {zmax, sum, static_cast<int32_t>(lo + arg)};
    }
  }

  // max z and sum exp(z - max z) of a row, from its block scores.
  std::pair<float, double> normaliser(int64_t row) const {
    const BlockScore* sc = &scores_[row * blocks_];
    float zmax = kNegInf;
    for (int64_t b = 0; b < blocks_; ++b) zmax = std::max(zmax, sc[b].max);
    double total = 0.0;
    for (int64_t b = 0; b < blocks_; ++b) total += block_mass(sc[b], zmax);
    return {zmax, total};
  }

  static float log_normaliser(const std::pair<float, double>& zn) {
    return zn.first + static_cast<float>(std::log(zn.second));
  }

  // Token and its log-prob for one row.
  void pick_row(int64_t row, float* z) {
    const BlockScore* sc = &scores_[row * blocks_];
    const RowState& st = rows_[row];
    const auto zn = normaliser(row);
    int64_t token = 0;
    if (p_.temperature == 0.0f) {
      // Ties to the lowest id: the first block reaching the max holds it.
      int64_t b = 0;
      while (b + 1 < blocks_ && sc[b].max != zn.first) ++b;
      token = sc[b].arg;
    } else {
      token = sample(row, sc, zn.first, static_cast<double>(p_.uniform[row]) * zn.second, z);
    }
    mixed(row, st, token, 1, z);
    p_.tokens[row] = token;
    p_.token_logprobs[row] = z[0] - log_normaliser(zn);
  }

  // Smallest id whose inclusive prefix sum of p = exp(z - zmax) exceeds `threshold`; if
  // rounding leaves none, the last id with p > 0. Block masses locate the block; only that
  // block is recomputed and scanned, accumulating in double element by element, so the
  // returned id always has p > 0 and lies below V.
  int64_t sample(int64_t row, const BlockScore* sc, float zmax, double threshold, float* z) const {
    const RowState& st = rows_[row];
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
      const int64_t lo = b * kBlock, n = std::min(kBlock, vocab_ - lo);
      mixed(row, st, lo, n, z);
      for (int64_t i = 0; i < n; ++i) {
        const float p = exp_poly(z[i] - zmax);
        cum += p;
        if (p > 0.0f && cum > threshold) return lo + i;
      }
    }
    if (last_positive_block < 0) return 0;  // no finite score at all (possible only unchecked)
    const int64_t lo = last_positive_block * kBlock, n = std::min(kBlock, vocab_ - lo);
    mixed(row, st, lo, n, z);
    int64_t i = n - 1;
    while (i > 0 && !(exp_poly(z[i] - zmax) > 0.0f)) --i;
    return lo + i;
  }

  // logprobs = z - logsumexp(z), straight into the output row.
  void write_logprobs(int64_t item) const {
    const Slice s = slice(item);
    const float norm = log_normaliser(normaliser(s.row));
    float* out = p_.logprobs + s.row * vocab_;
    for (int64_t lo = s.lo; lo < s.hi; lo += kBlock) {
      const int64_t n = std::min(kBlock, s.hi - lo);
      mixed(s.row, rows_[s.row], lo, n, out + lo);
#pragma omp simd
      for (int64_t i = lo; i < lo + n; ++i) out[i] -= norm;
    }
  }

  const StepParams& p_;
  const int64_t batch_, vocab_, blocks_;
  const bool topk_, needs_reward_;
  const float inv_t_;
  const T* base_;
  const T* reward_;
  int threads_ = 1;
  int64_t chunks_ = 1, items_ = 0;
  std::vector<SlicePartial> part_b_, part_r_;  // [B * chunks]
  std::vector<RowState> rows_;  // [B]
  std::vector<BlockScore> scores_;  // [B, blocks]
};

bool params_valid(const StepParams& p) {
  if (p.batch < 0 || p.vocab_size < 1 || p.vocab_size > std::numeric_limits<int32_t>::max()) return false;
  if (p.batch == 0) return true;
  if (!p.base_logits || !p.reward_logits || !p.tokens || !p.alpha || !p.token_logprobs) return false;
  if (p.base_stride < p.vocab_size && p.batch > 1) return false;
  if (p.reward_stride < p.vocab_size && p.batch > 1) return false;
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
  const int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  switch (params.logits_dtype) {
    case DType::kFloat32: StepRunner<float>(params, threads).run(); return 0;
    case DType::kBFloat16: StepRunner<Bf16>(params, threads).run(); return 0;
    case DType::kFloat16: StepRunner<Fp16>(params, threads).run(); return 0;
  }
  return 2;
}

}  // namespace taro
