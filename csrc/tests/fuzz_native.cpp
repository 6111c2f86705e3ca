// Native fuzz of the C interface taro::taro_step_cpu (csrc/taro_step.h) against the scalar
// reference of step_reference.h. ctest runs it in every CMake build; CI runs it once more
// under AddressSanitizer and UndefinedBehaviorSanitizer (make cmake-test-sanitize).
//
// Each case draws a shape (V from 1 to 70000, K from 1 to V, batch 1 to 6, 1 to 4 threads), a
// logits dtype (fp32, bf16, fp16; a bf16 embedding table sometimes), row strides at or above V
// (the padding holds NaN, which must never be read) or below V (overlapping rows: an expanded
// batch), row offsets, and rows of several kinds: random, exact ties, one finite token, a wide
// range, and rows the spec rejects (all masked, NaN, +inf). Logits, router weights and
// outputs are allocated to their exact size, so a read or write past any of them is an ASan
// error, not a silent pass.
//
// The contract checked, from the spec (../../shared/TARO_SPEC.md) and the header:
//  - a row the spec accepts (no NaN or +inf among its first V logits, a finite logit in each
//    model, a finite mixed score) matches the reference within the spec's tolerances. alpha:
//    abs 1e-4 for fp32 logits, 2e-3 for bf16/fp16. Tokens and log-probs are held to the
//    reference's mixed score at the kernel's own alpha (so an alpha inside its tolerance
//    does not move a near-tie): the token is identical unless the reference's margin is
//    below 1e-4 (top-2 gap of s when greedy; distance of the uniform from a prefix-sum
//    boundary when sampling) and is never a zero-probability token; log-probs abs 1e-4
//    (fp32) or 2e-2 (bf16/fp16). Margins and log-prob tolerances add fp32's resolution of
//    the numbers involved, 2^-20 * (|x_b| + |max x_b| + alpha (|x_r| + |max x_r|)) / T: below
//    1e-5 for logits of the size models produce, but it dominates for the wide rows (|x| up
//    to 1e4), where fp32 itself cannot hold a log-prob to 1e-4;
//  - a row the spec rejects (the Python API raises for it when check_inputs=True; the C
//    interface does not check values) still gets a token in [0, V), and the other rows of
//    the batch are exact;
//  - a stride below V with more than one row is either refused (non-zero code) or computed
//    as the overlapping rows it describes;
//  - parameters the header rules out get a non-zero code.
//
// Usage: taro_fuzz_native [cases [seed]]. A failing check prints its case number and seed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "step_reference.h"
#include "taro_step.h"

namespace {

using taro_test::Router;
using taro_test::RowResult;
using taro_test::reference_row;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kMargin = 1e-4;  // the spec's token margin

int failures = 0;
int current_case = -1;
uint64_t current_seed = 0;
char current_params[256] = "";  // the case's shape and settings, printed with each failure

#define CHECK(cond, ...)                                                                        \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      ++failures;                                                                               \
      std::printf("FAIL case %d (seed %llu; %s) %s:%d: %s: ", current_case,                     \
                  static_cast<unsigned long long>(current_seed), current_params, __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                                                 \
      std::printf("\n");                                                                        \
    }                                                                                           \
  } while (0)

// splitmix64: the same stream on every platform (std:: distributions are not).
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  float uniform(float lo, float hi) { return lo + static_cast<float>(uniform()) * (hi - lo); }
  int64_t range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(next() % (hi - lo + 1)); }  // [lo, hi]
  bool chance(double p) { return uniform() < p; }
  template <typename T, size_t N>
  T pick(const T (&options)[N]) { return options[next() % N]; }
};

// --- half-precision storage (round to nearest even) ------------------------------------------

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Values below fp16's smallest normal (2^-14) become zero; the fuzz draws no subnormals.
uint16_t float_to_fp16(float f) {
  if (std::isnan(f)) return 0x7e00;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (a < 6.103515625e-05f) return sign;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to inf (or is inf)
  int exp = static_cast<int>((u >> 23) & 0xffu) - 127 + 15;
  uint32_t mant = (u & 0x7fffffu) >> 13;
  const uint32_t rest = u & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (mant & 1u))) ++mant;
  if (mant == 0x400u) {
    mant = 0;
    ++exp;
  }
  return sign | static_cast<uint16_t>(exp << 10) | static_cast<uint16_t>(mant);
}

float fp16_to_float(uint16_t h) {
  const float sign = (h & 0x8000u) ? -1.0f : 1.0f;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  if (exp == 0x1f) return mant ? kNaN : sign * kInf;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  return sign * std::ldexp(1.0f + mant / 1024.0f, exp - 15);
}

// A logits buffer in one dtype; `get` returns exactly the value the kernel reads.
struct Buffer {
  taro::DType dtype;
  std::vector<float> f32;
  std::vector<uint16_t> h16;

  Buffer(taro::DType t, size_t n) : dtype(t) {
    if (t == taro::DType::kFloat32) {
      f32.assign(n, kNaN);
    } else {
      h16.assign(n, t == taro::DType::kBFloat16 ? float_to_bf16(kNaN) : float_to_fp16(kNaN));
    }
  }
  void set(size_t i, float v) {
    if (dtype == taro::DType::kFloat32) {
      f32[i] = v;
    } else {
      h16[i] = dtype == taro::DType::kBFloat16 ? float_to_bf16(v) : float_to_fp16(v);
    }
  }
  float get(size_t i) const {
    if (dtype == taro::DType::kFloat32) return f32[i];
    return dtype == taro::DType::kBFloat16 ? bf16_to_float(h16[i]) : fp16_to_float(h16[i]);
  }
  const void* at(size_t i) const {
    return dtype == taro::DType::kFloat32 ? static_cast<const void*>(f32.data() + i)
                                          : static_cast<const void*>(h16.data() + i);
  }
};

enum class RowKind { kRandom, kTies, kOneFinite, kWide, kAllMasked, kNaN, kPosInf };

// Writes one row of `vocab` values at buf[start ...] (row kinds above).
void fill_row(Buffer& buf, size_t start, int64_t vocab, RowKind kind, Rng& rng) {
  const float scale = rng.pick({0.5f, 3.0f, 10.0f, 30.0f});
  const double masked = rng.pick({0.0, 0.0, 0.05, 0.3, 0.9});
  auto random_value = [&] { return rng.chance(masked) ? -kInf : rng.uniform(-scale, scale); };
  switch (kind) {
    case RowKind::kTies: {
      const float values[] = {-2.0f, 0.0f, 1.0f, 1.0f, -kInf};
      for (int64_t j = 0; j < vocab; ++j) buf.set(start + j, rng.pick(values));
      return;
    }
    case RowKind::kOneFinite:
    case RowKind::kAllMasked:
      for (int64_t j = 0; j < vocab; ++j) buf.set(start + j, -kInf);
      if (kind == RowKind::kOneFinite) buf.set(start + rng.range(0, vocab - 1), rng.uniform(-scale, scale));
      return;
    case RowKind::kWide:
      for (int64_t j = 0; j < vocab; ++j) buf.set(start + j, rng.chance(0.1) ? -kInf : rng.uniform(-1e4f, 1e4f));
      return;
    default:
      break;
  }
  for (int64_t j = 0; j < vocab; ++j) buf.set(start + j, random_value());
  if (rng.chance(0.3)) {  // an exact tie at the maximum
    float best = -kInf;
    for (int64_t j = 0; j < vocab; ++j) best = std::fmax(best, buf.get(start + j));
    if (best == -kInf) best = 1.0f;
    for (int n = 0; n < 3; ++n) buf.set(start + rng.range(0, vocab - 1), best);
  }
  if (kind == RowKind::kNaN) {
    for (int n = static_cast<int>(rng.range(1, 3)); n > 0; --n) buf.set(start + rng.range(0, vocab - 1), kNaN);
  } else if (kind == RowKind::kPosInf) {
    buf.set(start + rng.range(0, vocab - 1), kInf);
  }
}

// Router weights scaled like PyTorch's default Linear init, so the MLP neither saturates nor
// loses fp32 precision; the embedding has V_embed >= V rows.
Router random_router(int64_t vocab_embed, int k, int d, int hidden, Rng& rng) {
  Router r;
  r.k = k;
  r.d = d;
  r.hidden = hidden;
  r.alpha_max = rng.pick({0.5f, 1.0f, 2.0f, 4.0f});
  const int64_t in = taro::router_input_dim(k, d);
  const float s1 = 1.0f / std::sqrt(static_cast<float>(in)), s2 = 2.0f / std::sqrt(static_cast<float>(hidden));
  for (int64_t i = 0; i < vocab_embed * d; ++i) r.embed.push_back(rng.uniform(-1.0f, 1.0f));
  for (int64_t i = 0; i < hidden * in; ++i) r.w1.push_back(rng.uniform(-s1, s1));
  for (int i = 0; i < hidden; ++i) r.b1.push_back(rng.uniform(-s1, s1));
  for (int i = 0; i < hidden; ++i) r.w2.push_back(rng.uniform(-s2, s2));
  r.b2.push_back(rng.uniform(-1.0f, 1.0f));
  return r;
}

int64_t draw_vocab(Rng& rng) {
  const double u = rng.uniform();
  if (u < 0.10) return 1;
  if (u < 0.25) return rng.range(2, 16);
  if (u < 0.55) return rng.range(17, 600);
  if (u < 0.80) return rng.range(601, 6000);
  return rng.range(6001, 70000);
}

int64_t draw_stride(int64_t vocab, int batch, Rng& rng) {
  const double u = rng.uniform();
  if (u < 0.05 && batch > 1) return rng.range(0, vocab - 1);  // overlapping rows
  if (u < 0.30) return vocab + rng.range(0, 600);
  return vocab + rng.pick({int64_t{0}, int64_t{0}, int64_t{1}, int64_t{3}, int64_t{17}});
}

struct Stats {
  int cases = 0, refused_overlap = 0, rows_checked = 0, rows_unspecified = 0, margin_mismatches = 0;
};

bool accepted_values(const std::vector<float>& x) {
  bool any_finite = false;
  for (float v : x) {
    if (std::isnan(v) || v == kInf) return false;
    any_finite |= std::isfinite(v);
  }
  return any_finite;
}

// One row of a spec-accepted case: alpha against the full reference, then token and
// log-probs against the reference mixed score at the kernel's alpha.
void check_row(int r, const std::vector<float>& xb, const std::vector<float>& xr, const Router* router,
               float alpha_override, float temperature, float uniform, int64_t token, float alpha,
               float token_logprob, const float* logprobs, bool half, Stats& stats) {
  const int vocab = static_cast<int>(xb.size());
  const double alpha_tol = half ? 2e-3 : 1e-4, lp_tol = half ? 2e-2 : 1e-4;
  const RowResult full = reference_row(xb.data(), xr.data(), vocab, router, alpha_override, temperature, uniform);
  CHECK(std::fabs(alpha - full.alpha) <= alpha_tol, "row %d: alpha %.9g, reference %.9g", r, alpha, full.alpha);
  if (!(std::fabs(alpha - full.alpha) <= alpha_tol)) return;
  const RowResult want = router == nullptr ? full
                                           : reference_row(xb.data(), xr.data(), vocab, nullptr, alpha, temperature,
                                                           uniform);
  const std::vector<double>& lp = want.logprobs;
  // fp32's resolution of the mixed score of token j (see the top of the file).
  double max_b = 0, max_r = 0;
  for (int j = 0; j < vocab; ++j) {
    if (std::isfinite(xb[j])) max_b = std::max(max_b, std::fabs(double{xb[j]}));
    if (std::isfinite(xr[j])) max_r = std::max(max_r, std::fabs(double{xr[j]}));
  }
  const double per_t = temperature > 0 ? 1.0 / temperature : 1.0;
  auto resolution = [&](int64_t j) {
    const double b = std::isfinite(xb[j]) ? std::fabs(double{xb[j]}) : max_b;
    const double r = std::isfinite(xr[j]) ? std::fabs(double{xr[j]}) : max_r;
    return 0x1p-20 * (b + max_b + alpha * (r + max_r)) * per_t;
  };
  auto lp_close = [&](double got, double ref, int64_t j) {
    if (std::isinf(ref)) return got == ref;
    return std::fabs(got - ref) <= lp_tol + resolution(j);
  };
  CHECK(token >= 0 && token < vocab, "row %d: token %lld outside [0, %d)", r, static_cast<long long>(token), vocab);
  if (token < 0 || token >= vocab) return;
  CHECK(lp[token] > -std::numeric_limits<double>::infinity(), "row %d: token %lld has zero probability", r,
        static_cast<long long>(token));
  if (token != want.token) {
    const int64_t i = want.token, t = token;
    bool within_margin;
    if (temperature == 0) {
      // An exact tie in both inputs must go to the lower id: no margin for it.
      const bool exact_tie = xb[t] == xb[i] && (alpha == 0 || xr[t] == xr[i]);
      within_margin = !exact_tie && lp[i] - lp[t] < kMargin + resolution(i) + resolution(t);
    } else {
      double below_t = 0;  // prefix sum of p up to, not including, t
      for (int64_t j = 0; j < t; ++j) below_t += std::exp(lp[j]);
      const double through_t = below_t + std::exp(lp[t]);
      // A score error e scales p by exp(e): the boundaries move by up to that factor.
      const double slack = kMargin + std::expm1(2 * 0x1p-20 * (2 * max_b + alpha * 2 * max_r) * per_t);
      within_margin = below_t - slack <= uniform && uniform < through_t + slack;
    }
    CHECK(within_margin, "row %d: token %lld, reference %lld (T=%g, u=%.9g, lp %g vs %g)", r,
          static_cast<long long>(t), static_cast<long long>(i), temperature, uniform, lp[t], lp[i]);
    stats.margin_mismatches += within_margin;
  }
  CHECK(lp_close(token_logprob, lp[token], token), "row %d: token logprob %.9g, reference %.9g", r, token_logprob,
        lp[token]);
  if (logprobs != nullptr) {
    for (int j = 0; j < vocab; ++j) {
      const bool ok = lp_close(logprobs[j], lp[j], j);
      CHECK(ok, "row %d: logprob[%d] %.9g, reference %.9g", r, j, logprobs[j], lp[j]);
      if (!ok) break;
    }
  }
  ++stats.rows_checked;
}

void run_case(Rng& rng, Stats& stats) {
  const int64_t vocab = draw_vocab(rng);
  const int batch = static_cast<int>(vocab > 6000 ? rng.range(1, 3) : rng.range(1, 6));
  const int threads = static_cast<int>(rng.range(1, 4));
  const taro::DType dtype = rng.pick({taro::DType::kFloat32, taro::DType::kFloat32, taro::DType::kFloat32,
                                      taro::DType::kBFloat16, taro::DType::kFloat16});
  const bool use_router = rng.chance(0.7);
  const int k = static_cast<int>(
      vocab <= 64 && rng.chance(0.3) ? vocab : rng.range(1, std::min<int64_t>(vocab, rng.pick({4, 16, 64}))));
  const float alpha_override = use_router ? 0.0f : rng.pick({0.0f, 0.5f, 1.0f, 2.5f, rng.uniform(0.0f, 4.0f)});
  // Temperatures: greedy, ordinary, huge (p uniform over the unmasked tokens), and values
  // whose 1/T is not a finite fp32 number (the spec's computation is undefined there).
  const double tu = rng.uniform();
  const float temperature = tu < 0.45 ? 0.0f : tu < 0.90 ? rng.uniform(0.25f, 2.5f) : tu < 0.95 ? 1e30f
                            : rng.pick({1e-40f, kInf});
  const bool temperature_defined = std::isfinite(temperature) && std::isfinite(1.0f / (temperature ? temperature : 1));
  const bool want_logprobs = rng.chance(0.7);
  const bool with_rejected_rows = rng.chance(0.3);

  const int64_t strides[2] = {draw_stride(vocab, batch, rng), draw_stride(vocab, batch, rng)};
  const int64_t offsets[2] = {rng.chance(0.5) ? 0 : rng.range(1, 64), rng.chance(0.5) ? 0 : rng.range(1, 64)};
  const bool overlap = batch > 1 && (strides[0] < vocab || strides[1] < vocab);
  std::vector<Buffer> buffers;
  for (int m = 0; m < 2; ++m) {
    // Exactly the bytes the rows span: a read past the last row's V-th column is an ASan error.
    buffers.emplace_back(dtype, static_cast<size_t>(offsets[m] + (batch - 1) * strides[m] + vocab));
  }
  for (int r = 0; r < batch; ++r) {
    const bool same_rows = rng.chance(0.15);
    for (int m = 0; m < 2; ++m) {
      RowKind kind = rng.pick({RowKind::kRandom, RowKind::kRandom, RowKind::kRandom, RowKind::kRandom,
                               RowKind::kTies, RowKind::kOneFinite, RowKind::kWide});
      if (with_rejected_rows && rng.chance(0.25)) {
        kind = rng.pick({RowKind::kAllMasked, RowKind::kNaN, RowKind::kPosInf});
      }
      const size_t start = offsets[m] + r * strides[m];
      if (m == 1 && same_rows) {
        for (int64_t j = 0; j < vocab; ++j) buffers[1].set(start + j, buffers[0].get(offsets[0] + r * strides[0] + j));
      } else {
        fill_row(buffers[m], start, vocab, kind, rng);
      }
    }
  }
  // The kernel's view of each row (rows may overlap: later rows overwrote earlier ones).
  std::vector<std::vector<float>> xb(batch, std::vector<float>(vocab)), xr = xb;
  for (int r = 0; r < batch; ++r) {
    for (int64_t j = 0; j < vocab; ++j) {
      xb[r][j] = buffers[0].get(offsets[0] + r * strides[0] + j);
      xr[r][j] = buffers[1].get(offsets[1] + r * strides[1] + j);
    }
  }
  std::vector<float> uniform(batch);
  for (float& u : uniform) {
    const double c = rng.uniform();
    u = c < 0.05 ? 0.0f : c < 0.10 ? std::nextafter(1.0f, 0.0f) : static_cast<float>(rng.uniform());
  }

  const int64_t vocab_embed = vocab + rng.range(0, 3);
  const Router router = use_router ? random_router(vocab_embed, k, static_cast<int>(rng.range(1, 4)),
                                                   static_cast<int>(rng.range(1, 8)), rng)
                                   : Router{};
  const bool bf16_embed = use_router && rng.chance(0.3);
  std::vector<uint16_t> embed_bf16;
  Router router_as_read = router;  // the fp32 values of the bf16 table the kernel reads
  if (bf16_embed) {
    for (float& e : router_as_read.embed) {
      embed_bf16.push_back(float_to_bf16(e));
      e = bf16_to_float(embed_bf16.back());
    }
  }

  std::vector<int64_t> tokens(batch, -1);
  std::vector<float> alpha(batch, kNaN), token_logprobs(batch, kNaN);
  std::vector<float> logprobs(want_logprobs ? static_cast<size_t>(batch) * vocab : 0, kNaN);
  taro::StepParams p;
  p.base_logits = buffers[0].at(offsets[0]);
  p.reward_logits = buffers[1].at(offsets[1]);
  p.logits_dtype = dtype;
  p.batch = batch;
  p.vocab_size = vocab;
  p.base_stride = strides[0];
  p.reward_stride = strides[1];
  p.k = k;
  p.temperature = temperature;
  p.uniform = uniform.data();
  p.use_alpha_override = !use_router;
  p.alpha_override = alpha_override;
  if (use_router) {
    p.router.embed = bf16_embed ? static_cast<const void*>(embed_bf16.data()) : router.embed.data();
    p.router.embed_dtype = bf16_embed ? taro::DType::kBFloat16 : taro::DType::kFloat32;
    p.router.w1 = router.w1.data();
    p.router.b1 = router.b1.data();
    p.router.w2 = router.w2.data();
    p.router.b2 = router.b2.data();
    p.router.hidden = router.hidden;
    p.router.embed_dim = router.d;
    p.router.alpha_max = router.alpha_max;
  }
  p.tokens = tokens.data();
  p.alpha = alpha.data();
  p.token_logprobs = token_logprobs.data();
  p.logprobs = want_logprobs ? logprobs.data() : nullptr;
  std::snprintf(current_params, sizeof current_params,
                "V=%lld B=%d K=%d d=%d H=%d threads=%d dtype=%d embed=%s alpha_override=%s T=%g strides=%lld/%lld "
                "offsets=%lld/%lld logprobs=%d", static_cast<long long>(vocab), batch, k, router.d, router.hidden,
                threads, static_cast<int>(dtype), bf16_embed ? "bf16" : "fp32",
                use_router ? "none" : std::to_string(alpha_override).c_str(), temperature,
                static_cast<long long>(strides[0]), static_cast<long long>(strides[1]),
                static_cast<long long>(offsets[0]), static_cast<long long>(offsets[1]), want_logprobs);
  const int rc = taro::taro_step_cpu(p, threads);
  ++stats.cases;
  if (overlap && rc != 0) {
    ++stats.refused_overlap;
    return;
  }
  CHECK(rc == 0, "rc=%d (V=%lld, B=%d, K=%d, T=%g)", rc, static_cast<long long>(vocab), batch, k, temperature);
  if (rc != 0) return;

  const bool half = dtype != taro::DType::kFloat32;
  for (int r = 0; r < batch; ++r) {
    bool accepted = temperature_defined && accepted_values(xb[r]) && accepted_values(xr[r]);
    if (accepted && (use_router || alpha_override > 0)) {  // disjoint supports: no finite mixed score
      bool common = false;
      for (int64_t j = 0; j < vocab && !common; ++j) common = std::isfinite(xb[r][j]) && std::isfinite(xr[r][j]);
      accepted = common;
    }
    if (!accepted) {
      ++stats.rows_unspecified;
      CHECK(tokens[r] >= 0 && tokens[r] < vocab, "rejected row %d: token %lld outside [0, %lld)", r,
            static_cast<long long>(tokens[r]), static_cast<long long>(vocab));
      continue;
    }
    const float* row_logprobs = want_logprobs ? &logprobs[static_cast<size_t>(r) * vocab] : nullptr;
    check_row(r, xb[r], xr[r], use_router ? &router_as_read : nullptr, alpha_override, temperature, uniform[r],
              tokens[r], alpha[r], token_logprobs[r], row_logprobs, half, stats);
  }
}

// Parameters the header rules out: a non-zero code, whatever the pointers hold.
void test_refused_parameters() {
  current_case = -1;
  const std::vector<float> x = {1, 2, 3, 4};
  Router router;
  router.k = 2;
  router.d = 1;
  router.hidden = 2;
  router.embed.assign(4, 0.1f);
  router.w1.assign(2 * taro::router_input_dim(2, 1), 0.1f);
  router.b1.assign(2, 0.0f);
  router.w2.assign(2, 0.1f);
  router.b2.assign(1, 0.0f);
  std::vector<int64_t> tokens(2, -1);
  std::vector<float> alpha(2), token_logprobs(2), uniform = {0.5f, 0.5f};
  auto valid = [&] {
    taro::StepParams p;
    p.base_logits = p.reward_logits = x.data();
    p.batch = 1;
    p.vocab_size = 4;
    p.base_stride = p.reward_stride = 4;
    p.k = 2;
    p.uniform = uniform.data();
    p.router.embed = router.embed.data();
    p.router.w1 = router.w1.data();
    p.router.b1 = router.b1.data();
    p.router.w2 = router.w2.data();
    p.router.b2 = router.b2.data();
    p.router.hidden = 2;
    p.router.embed_dim = 1;
    p.tokens = tokens.data();
    p.alpha = alpha.data();
    p.token_logprobs = token_logprobs.data();
    return p;
  };
  CHECK(taro::taro_step_cpu(valid(), 1) == 0, "the valid baseline is refused");
  struct Bad {
    const char* what;
    void (*edit)(taro::StepParams&);
  };
  const Bad bad[] = {
      {"vocab_size 0", [](taro::StepParams& p) { p.vocab_size = 0; }},
      {"batch -1", [](taro::StepParams& p) { p.batch = -1; }},
      {"k 0", [](taro::StepParams& p) { p.k = 0; }},
      {"k > vocab_size", [](taro::StepParams& p) { p.k = 5; }},
      {"temperature -1", [](taro::StepParams& p) { p.temperature = -1.0f; }},
      {"temperature NaN", [](taro::StepParams& p) { p.temperature = kNaN; }},
      {"sampling without uniform", [](taro::StepParams& p) { p.temperature = 0.7f, p.uniform = nullptr; }},
      {"alpha_override -0.5", [](taro::StepParams& p) { p.use_alpha_override = true, p.alpha_override = -0.5f; }},
      {"alpha_override NaN", [](taro::StepParams& p) { p.use_alpha_override = true, p.alpha_override = kNaN; }},
      {"no embed", [](taro::StepParams& p) { p.router.embed = nullptr; }},
      {"no w1", [](taro::StepParams& p) { p.router.w1 = nullptr; }},
      {"hidden 0", [](taro::StepParams& p) { p.router.hidden = 0; }},
      {"embed_dim 0", [](taro::StepParams& p) { p.router.embed_dim = 0; }},
      {"fp16 embed", [](taro::StepParams& p) { p.router.embed_dtype = taro::DType::kFloat16; }},
      {"unknown logits dtype", [](taro::StepParams& p) { p.logits_dtype = static_cast<taro::DType>(7); }},
      {"no base logits", [](taro::StepParams& p) { p.base_logits = nullptr; }},
      {"no tokens output", [](taro::StepParams& p) { p.tokens = nullptr; }},
      {"no alpha output", [](taro::StepParams& p) { p.alpha = nullptr; }},
  };
  for (const Bad& b : bad) {
    taro::StepParams p = valid();
    b.edit(p);
    CHECK(taro::taro_step_cpu(p, 1) != 0, "%s accepted", b.what);
  }
  taro::StepParams empty;  // batch 0: nothing to do, no pointer needed
  empty.vocab_size = 4;
  CHECK(taro::taro_step_cpu(empty, 1) == 0, "an empty batch is refused");
}

}  // namespace

int main(int argc, char** argv) {
  // 3000 by default (about 7 s, 14 s under ASan). Rare shapes matter: the large-logit alpha
  // error fixed in b48d72c (test_large_logits now pins it) hit about one case in 1500 and
  // first at case 4249 of the default seed.
  const int cases = argc > 1 ? std::atoi(argv[1]) : 3000;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20261201;
  test_refused_parameters();
  Stats stats;
  Rng rng{seed};
  for (current_case = 0; current_case < cases; ++current_case) {
    current_seed = seed;
    run_case(rng, stats);
  }
  std::printf("taro_fuzz_native: %d cases (seed %llu): %d rows held to the reference (%d token differences inside "
              "the spec's margin), %d rejected rows (token in range), %d overlapping-stride cases refused; %s\n",
              stats.cases, static_cast<unsigned long long>(seed), stats.rows_checked, stats.margin_mismatches,
              stats.rows_unspecified, stats.refused_overlap, failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
