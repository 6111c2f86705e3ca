// Native test of the torch-free CPU kernel (taro::taro_step_cpu), run by ctest.
//
// Small cases are checked against values computed by hand and against `reference_row`
// (step_reference.h), a plain double-precision loop over the spec (../../shared/TARO_SPEC.md).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "step_reference.h"
#include "taro_step.h"

namespace {

using taro_test::reference_row;
using taro_test::Router;
using taro_test::RowResult;

constexpr float kInf = std::numeric_limits<float>::infinity();
int failures = 0;

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      ++failures;                                                     \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

// Deterministic weights; every embedding row differs, so swapping two top-K ids changes alpha.
Router make_router(int vocab, int k, int d, int hidden) {
  Router r;
  r.k = k;
  r.d = d;
  r.hidden = hidden;
  const int64_t in = taro::router_input_dim(k, d);
  for (int i = 0; i < vocab * d; ++i) r.embed.push_back(0.5f * std::sin(0.7f * i + 0.3f));
  for (int64_t i = 0; i < hidden * in; ++i) r.w1.push_back(0.3f * std::cos(1.3f * i));
  for (int i = 0; i < hidden; ++i) r.b1.push_back(0.1f * i - 0.2f);
  for (int i = 0; i < hidden; ++i) r.w2.push_back(0.4f * std::sin(2.1f * i + 1.0f));
  r.b2.push_back(0.05f);
  return r;
}

struct Step {
  std::vector<int64_t> tokens;
  std::vector<float> alpha, token_logprobs, logprobs;
  int rc = 0;
};

// Runs the kernel on `batch` rows of width `width` (vocab_size columns used).
Step run_kernel(const void* base, const void* reward, taro::DType dtype, int batch, int vocab, int width,
                const Router* router, float alpha_override, float temperature, const std::vector<float>& uniform,
                int threads, taro::DType embed_dtype = taro::DType::kFloat32, const void* embed = nullptr) {
  Step out;
  out.tokens.assign(batch, -1);
  out.alpha.assign(batch, 0);
  out.token_logprobs.assign(batch, 0);
  out.logprobs.assign(static_cast<size_t>(batch) * vocab, 0);
  taro::StepParams p;
  p.base_logits = base;
  p.reward_logits = reward;
  p.logits_dtype = dtype;
  p.batch = batch;
  p.vocab_size = vocab;
  p.base_stride = width;
  p.reward_stride = width;
  p.temperature = temperature;
  p.uniform = uniform.empty() ? nullptr : uniform.data();
  p.use_alpha_override = router == nullptr;
  p.alpha_override = alpha_override;
  if (router != nullptr) {
    p.k = router->k;
    p.router.embed = embed != nullptr ? embed : router->embed.data();
    p.router.embed_dtype = embed_dtype;
    p.router.w1 = router->w1.data();
    p.router.b1 = router->b1.data();
    p.router.w2 = router->w2.data();
    p.router.b2 = router->b2.data();
    p.router.hidden = router->hidden;
    p.router.embed_dim = router->d;
    p.router.alpha_max = router->alpha_max;
  }
  p.tokens = out.tokens.data();
  p.alpha = out.alpha.data();
  p.token_logprobs = out.token_logprobs.data();
  p.logprobs = out.logprobs.data();
  out.rc = taro::taro_step_cpu(p, threads);
  return out;
}

// Kernel rows against reference_row: tokens exact, alpha and log-probs within `tol`.
void expect_matches_reference(const char* name, const std::vector<float>& base, const std::vector<float>& reward,
                              int batch, int vocab, int width, const Router* router, float alpha_override,
                              float temperature, const std::vector<float>& uniform, int threads, double tol) {
  const Step got = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, batch, vocab, width, router,
                              alpha_override, temperature, uniform, threads);
  CHECK(got.rc == 0, "%s: rc=%d", name, got.rc);
  for (int r = 0; r < batch; ++r) {
    const RowResult want = reference_row(&base[r * width], &reward[r * width], vocab, router, alpha_override,
                                         temperature, uniform.empty() ? 0.0 : uniform[r]);
    CHECK(got.tokens[r] == want.token, "%s row %d: token %ld, want %ld", name, r, (long)got.tokens[r],
          (long)want.token);
    CHECK(std::fabs(got.alpha[r] - want.alpha) < tol, "%s row %d: alpha %g, want %g", name, r, got.alpha[r],
          want.alpha);
    CHECK(std::fabs(got.token_logprobs[r] - want.token_logprob) < tol, "%s row %d: token logprob %g, want %g", name,
          r, got.token_logprobs[r], want.token_logprob);
    for (int j = 0; j < vocab; ++j) {
      const double g = got.logprobs[r * vocab + j], w = want.logprobs[j];
      const bool ok = std::isinf(w) ? g == w : std::fabs(g - w) < tol;
      CHECK(ok, "%s row %d: logprob[%d] %g, want %g", name, r, j, g, w);
      if (!ok) break;
    }
  }
}

uint16_t to_bf16_exact(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // the test uses values with zero low bits
}

uint16_t to_fp16_exact(float f) {  // normal values and infinities only
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  if (std::isinf(f)) return sign | 0x7c00u;
  if (f == 0) return sign;
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  return sign | static_cast<uint16_t>(exp << 10) | static_cast<uint16_t>((u >> 13) & 0x3ff);
}

// Five tokens, small enough to follow by hand.
void test_hand_computed() {
  const std::vector<float> base = {1, 3, 3, -kInf, 0};
  const std::vector<float> reward = {0.5f, 0.5f, 2, 1, -1};
  const double sum_b = std::exp(1.0) + 2 * std::exp(3.0) + 1;  // exp(-inf) = 0

  // alpha = 0 is the base model: ids 1 and 2 tie at the max, the lower id wins.
  Step s = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, 1, 5, 5, nullptr, 0.0f, 0.0f, {}, 1);
  CHECK(s.rc == 0 && s.tokens[0] == 1, "greedy tie: token %ld", (long)s.tokens[0]);
  CHECK(std::fabs(s.token_logprobs[0] - (3 - std::log(sum_b))) < 1e-6, "token logprob %g", s.token_logprobs[0]);
  CHECK(s.logprobs[3] == -kInf, "masked token logprob %g", s.logprobs[3]);

  // Sampling at T = 1 from p = (e, e^3, e^3, 0, 1) / sum_b: cumulative 0.062, 0.519, 0.977, 0.977, 1.
  const std::pair<float, int64_t> draws[] = {{0.0f, 0}, {0.05f, 0}, {0.07f, 1}, {0.6f, 2}, {0.99f, 4}};
  for (const auto& [u, want] : draws) {
    s = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, 1, 5, 5, nullptr, 0.0f, 1.0f, {u}, 1);
    CHECK(s.tokens[0] == want, "u=%g: token %ld, want %ld", u, (long)s.tokens[0], (long)want);
  }

  // A trailing masked token is never drawn, even for the largest float below 1.
  const std::vector<float> masked_tail = {1, 3, 3, 0, -kInf};
  s = run_kernel(masked_tail.data(), reward.data(), taro::DType::kFloat32, 1, 5, 5, nullptr, 0.0f, 1.0f,
                 {std::nextafter(1.0f, 0.0f)}, 1);
  CHECK(s.tokens[0] == 3, "u just below 1: token %ld, want 3", (long)s.tokens[0]);
  // Nor a leading masked token for u = 0: the first token of positive probability is id 1.
  const std::vector<float> masked_head = {-kInf, 3, 3, 0, 1};
  s = run_kernel(masked_head.data(), reward.data(), taro::DType::kFloat32, 1, 5, 5, nullptr, 0.0f, 1.0f, {0.0f}, 1);
  CHECK(s.tokens[0] == 1, "u = 0: token %ld, want 1", (long)s.tokens[0]);

  // alpha = 1: s = lp_b + lp_r; by hand, argmax of x_b + x_r is id 2 (3 + 2).
  s = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, 1, 5, 5, nullptr, 1.0f, 0.0f, {}, 1);
  CHECK(s.tokens[0] == 2, "alpha=1 greedy: token %ld, want 2", (long)s.tokens[0]);

  // The router path, with ties inside both top-K lists (ids 1, 2 in base; 0, 1 in reward).
  const Router router = make_router(5, 3, 2, 4);
  for (float t : {0.0f, 0.7f, 1.0f}) {
    expect_matches_reference("hand router", base, reward, 1, 5, 5, &router, 0, t, {0.5f}, 1, 2e-5);
  }
}

// The tie order inside the top-K reaches alpha through the embedding: the reference with the
// other order gives a different alpha, so the comparison above can see a wrong tie rule.
void test_tie_order_matters() {
  const std::vector<float> base = {1, 3, 3, -kInf, 0};
  std::vector<float> swapped = base;
  std::swap(swapped[1], swapped[2]);  // same values; only which id is which changes
  const std::vector<float> reward = {0.5f, 0.5f, 2, 1, -1};
  const Router router = make_router(5, 3, 2, 4);
  const RowResult a = reference_row(base.data(), reward.data(), 5, &router, 0, 0, 0);
  Router permuted = router;  // embed rows 1 and 2 swapped: alpha equal iff tie order is ignored
  for (int c = 0; c < router.d; ++c) std::swap(permuted.embed[1 * router.d + c], permuted.embed[2 * router.d + c]);
  const RowResult b = reference_row(base.data(), reward.data(), 5, &permuted, 0, 0, 0);
  CHECK(std::fabs(a.alpha - b.alpha) > 1e-3, "tie order does not reach alpha: %g vs %g", a.alpha, b.alpha);
}

// Deterministic pseudo-random logits with masked entries and duplicated maxima.
std::vector<float> random_rows(int batch, int width, uint32_t seed) {
  std::vector<float> x(static_cast<size_t>(batch) * width);
  uint32_t s = seed;
  for (float& v : x) {
    s = s * 1664525u + 1013904223u;
    v = 6.0f * ((s >> 8) * (1.0f / 16777216.0f)) - 3.0f;
  }
  for (int r = 0; r < batch; ++r) {
    for (int j = 0; j < width; j += 7 + r) x[r * width + j] = -kInf;
    x[r * width + width / 3] = 5.0f;
    x[r * width + width / 2] = 5.0f;
  }
  return x;
}

// Rows wider than V (padding holds NaN: columns >= V must never be read), several batch
// sizes, whole-row and split-row threading, both pick rules.
void test_against_reference() {
  const struct {
    int batch, vocab, width, threads;
  } shapes[] = {{1, 40000, 40000, 2}, {3, 3000, 3011, 2}, {4, 20000, 20003, 2}, {2, 7, 9, 1}, {5, 1000, 1000, 4}};
  for (const auto& sh : shapes) {
    std::vector<float> base = random_rows(sh.batch, sh.width, 1), reward = random_rows(sh.batch, sh.width, 2);
    for (int r = 0; r < sh.batch; ++r) {
      for (int j = sh.vocab; j < sh.width; ++j) base[r * sh.width + j] = reward[r * sh.width + j] = std::nanf("");
    }
    std::vector<float> uniform;
    for (int r = 0; r < sh.batch; ++r) uniform.push_back((r + 0.37f) / sh.batch);
    const Router router = make_router(sh.vocab, std::min(4, sh.vocab), 3, 8);
    for (float t : {0.0f, 0.7f}) {
      expect_matches_reference("router", base, reward, sh.batch, sh.vocab, sh.width, &router, 0, t, uniform,
                               sh.threads, 1e-4);
    }
  }
  for (const auto& sh : shapes) {
    const std::vector<float> base = random_rows(sh.batch, sh.width, 3), reward = random_rows(sh.batch, sh.width, 4);
    std::vector<float> uniform;
    for (int r = 0; r < sh.batch; ++r) uniform.push_back((r + 0.61f) / sh.batch);
    for (float t : {0.0f, 1.0f}) {
      expect_matches_reference("override", base, reward, sh.batch, sh.vocab, sh.width, nullptr, 0.8f, t, uniform,
                               sh.threads, 1e-4);
    }
  }
}

// Rows of large logits (|x| near 1e4, where fp32's grid is 1e-3 wide; the spec's alpha
// tolerance is still 1e-4): the log-prob features must come from x - m, not from
// x - (m + log d) or a rounded m log2(e), each off by up to 5e-4 there (alpha was off by up
// to 6.7e-4 here before). The router reads the top-1 base log-prob (about -4.7) through one
// unsaturated unit, so alpha moves about 1.3x the feature's error. Alpha only: the log-probs
// of such rows are themselves on a 1e-3 grid.
void test_large_logits() {
  const int batch = 3, vocab = 5000;
  Router router;
  router.k = 1;
  router.d = 1;
  router.hidden = 1;
  router.alpha_max = 4.0f;
  router.embed.assign(vocab, 0.0f);
  router.w1 = {1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // [lp_b top-1, lp_r top-1, H_b, H_r, embeddings]
  router.b1 = {5.0f};
  router.w2 = {2.0f};
  router.b2 = {-0.35f};
  for (float shift : {1e4f, -7777.7f, 3001.3f, 12345.6f, 0.0f}) {
    std::vector<float> base = random_rows(batch, vocab, 5), reward = random_rows(batch, vocab, 6);
    for (int i = 0; i < batch * vocab; ++i) {
      base[i] += shift;
      reward[i] += 0.5f * shift;
    }
    const Step got = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, batch, vocab, vocab, &router, 0,
                                0.0f, {}, 1);
    CHECK(got.rc == 0, "large logits: rc=%d", got.rc);
    for (int r = 0; r < batch; ++r) {
      const RowResult want = reference_row(&base[r * vocab], &reward[r * vocab], vocab, &router, 0, 0.0, 0.0);
      CHECK(std::fabs(got.alpha[r] - want.alpha) < 1e-4, "large logits (shift %g) row %d: alpha %.7f, want %.7f",
            shift, r, got.alpha[r], want.alpha);
    }
  }
}

// bf16 and fp16 logits holding exactly the values of an fp32 case give identical results,
// and a bf16 embedding table equals its fp32 copy.
void test_half_inputs() {
  const int batch = 2, vocab = 6;
  const std::vector<float> base = {1.5f, -0.25f, 3.0f, 3.0f, -kInf, 0.75f, 2.0f, 2.0f, -1.0f, 0.5f, 0.5f, -3.5f};
  const std::vector<float> reward = {0.5f, 2.25f, -1.0f, 1.0f, 0.0f, -kInf, 1.0f, -0.5f, 4.0f, 0.25f, 0.25f, 1.0f};
  Router router = make_router(vocab, 3, 2, 4);
  std::vector<uint16_t> embed_bf16;
  for (float& e : router.embed) {
    e = std::ldexp(std::round(std::ldexp(e, 6)), -6);  // 7 significant bits: exact in bf16
    embed_bf16.push_back(to_bf16_exact(e));
  }
  const std::vector<float> uniform = {0.3f, 0.8f};
  for (float t : {0.0f, 0.7f}) {
    const Step f32 = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, batch, vocab, vocab, &router, 0,
                                t, uniform, 1);
    expect_matches_reference("fp32 for half", base, reward, batch, vocab, vocab, &router, 0, t, uniform, 1, 1e-5);
    std::vector<uint16_t> bb, br, hb, hr;
    for (float v : base) bb.push_back(to_bf16_exact(v)), hb.push_back(to_fp16_exact(v));
    for (float v : reward) br.push_back(to_bf16_exact(v)), hr.push_back(to_fp16_exact(v));
    const Step bf = run_kernel(bb.data(), br.data(), taro::DType::kBFloat16, batch, vocab, vocab, &router, 0, t,
                               uniform, 1, taro::DType::kBFloat16, embed_bf16.data());
    const Step hf = run_kernel(hb.data(), hr.data(), taro::DType::kFloat16, batch, vocab, vocab, &router, 0, t,
                               uniform, 1);
    for (const Step* s : {&bf, &hf}) {
      CHECK(s->rc == 0, "half rc %d", s->rc);
      CHECK(s->tokens == f32.tokens, "half tokens differ (T=%g)", t);
      CHECK(s->alpha == f32.alpha, "half alpha differs (T=%g): %g vs %g", t, s->alpha[0], f32.alpha[0]);
      // Within 1e-6, not bit for bit: the compiler may contract z = (x_b + alpha x_r) / T into
      // fused multiply-adds differently for each dtype's instantiation.
      for (size_t j = 0; j < f32.logprobs.size(); ++j) {
        CHECK(std::fabs(s->logprobs[j] - f32.logprobs[j]) < 1e-6 ||
                  (std::isinf(f32.logprobs[j]) && s->logprobs[j] == f32.logprobs[j]),
              "half logprob %zu differs (T=%g): %g vs %g", j, t, s->logprobs[j], f32.logprobs[j]);
      }
    }
  }
}

// The fast paths: without token log-probs greedy skips every exp (GenARM reads each row once),
// and rows split across threads (B below the thread count) or repeated with stride 0 give the
// same tokens and alpha as one thread over contiguous rows.
void test_fast_paths_agree() {
  const int vocab = 70000, batch = 3;
  std::vector<float> base = random_rows(batch, vocab, 5), reward = random_rows(batch, vocab, 6);
  const Router router = make_router(vocab, 16, 3, 8);
  for (const Router* r : {&router, static_cast<const Router*>(nullptr)}) {
    const Step full = run_kernel(base.data(), reward.data(), taro::DType::kFloat32, batch, vocab, vocab, r, 0.8f,
                                 0.0f, {}, 1);
    for (int threads : {1, 2, 4}) {
      taro::StepParams p;
      std::vector<int64_t> tokens(batch, -1);
      std::vector<float> alpha(batch, -1);
      p.base_logits = base.data();
      p.reward_logits = reward.data();
      p.batch = batch;
      p.vocab_size = vocab;
      p.base_stride = p.reward_stride = vocab;
      p.use_alpha_override = r == nullptr;
      p.alpha_override = 0.8f;
      if (r != nullptr) {
        p.k = r->k;
        p.router = {r->embed.data(), taro::DType::kFloat32, r->w1.data(), r->b1.data(), r->w2.data(), r->b2.data(),
                    r->hidden, r->d, r->alpha_max};
      }
      p.tokens = tokens.data();
      p.alpha = alpha.data();  // token_logprobs and logprobs stay nullptr: not requested
      CHECK(taro::taro_step_cpu(p, threads) == 0, "no-logprob step failed");
      CHECK(tokens == full.tokens, "no-logprob tokens differ (threads=%d)", threads);
      for (int b = 0; b < batch; ++b) {
        CHECK(std::fabs(alpha[b] - full.alpha[b]) < 1e-5, "alpha differs (threads=%d): %g vs %g", threads, alpha[b],
              full.alpha[b]);
      }
      // Every row is row 1 (stride 0): each gets row 1's result.
      p.base_logits = base.data() + vocab;
      p.reward_logits = reward.data() + vocab;
      p.base_stride = p.reward_stride = 0;
      CHECK(taro::taro_step_cpu(p, threads) == 0, "stride-0 step failed");
      for (int b = 0; b < batch; ++b) {
        CHECK(tokens[b] == full.tokens[1], "stride 0 row %d: token %ld, want %ld", b, (long)tokens[b],
              (long)full.tokens[1]);
      }
    }
  }
}

void test_bad_parameters() {
  const std::vector<float> x = {1, 2, 3};
  const Router router = make_router(3, 4, 2, 4);  // k = 4 > vocab 3
  Step s = run_kernel(x.data(), x.data(), taro::DType::kFloat32, 1, 3, 3, &router, 0, 0, {}, 1);
  CHECK(s.rc != 0, "k > vocab accepted");
  s = run_kernel(x.data(), x.data(), taro::DType::kFloat32, 1, 3, 3, nullptr, 0.5f, 0.7f, {}, 1);
  CHECK(s.rc != 0, "sampling without uniform accepted");
}

}  // namespace

int main() {
  test_hand_computed();
  test_tie_order_matters();
  test_against_reference();
  test_large_logits();
  test_half_inputs();
  test_fast_paths_agree();
  test_bad_parameters();
  if (failures == 0) std::printf("taro_native_test: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
