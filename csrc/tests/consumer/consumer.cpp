// Links the installed taro::kernels and runs one GenARM and one TARo step on values
// computed by hand (V = 4), plus one rejected call: what a decoder's first use looks like.
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "taro_step.h"
#ifdef CONSUMER_WITH_CUDA
#include "cuda/taro_step_cuda.h"
#endif

int main() {
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      ++failures;
      std::printf("FAIL: %s\n", what);
    }
  };
  const float base[4] = {0.f, 1.f, 2.f, 0.f};
  const float reward[4] = {3.f, 0.f, 0.f, 0.f};
  int64_t token = -1;
  float alpha = -1.f, token_logprob = 0.f;

  taro::StepParams p;
  p.base_logits = base;
  p.reward_logits = reward;
  p.batch = 1;
  p.vocab_size = 4;
  p.base_stride = p.reward_stride = 4;
  p.k = 2;
  p.tokens = &token;
  p.alpha = &alpha;
  p.token_logprobs = &token_logprob;

  // GenARM, alpha 1: the scores x_b + x_r are {3, 1, 2, 0} up to a constant, so token 0, with
  // log-prob 3 - log(e^3 + e^1 + e^2 + e^0) (both row normalisers cancel in the mix).
  p.use_alpha_override = true;
  p.alpha_override = 1.f;
  check(taro::taro_step_cpu(p, 1) == 0, "GenARM step returned an error");
  const double expected_lp = 3.0 - std::log(std::exp(3.0) + std::exp(1.0) + std::exp(2.0) + 1.0);
  check(token == 0, "GenARM token is not 0");
  check(alpha == 1.f, "GenARM alpha is not the override");
  check(std::fabs(token_logprob - expected_lp) < 1e-5, "GenARM token log-prob");

  // TARo with a router whose output weights are zero: u = b2 = 0, alpha = alpha_max / 2 = 1.5,
  // scores x_b + 1.5 x_r = {4.5, 1, 2, 0}: token 0 again.
  const int d = 2, hidden = 3;
  const int64_t inputs = taro::router_input_dim(p.k, d);
  float embed[4 * d] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
  float w1[hidden * 14] = {};  // router_input_dim(2, 2) = 14
  float b1[hidden] = {0.f, 0.f, 0.f}, w2[hidden] = {0.f, 0.f, 0.f}, b2 = 0.f;
  check(inputs == 14, "router_input_dim(2, 2)");
  p.use_alpha_override = false;
  p.router.embed = embed;
  p.router.w1 = w1;
  p.router.b1 = b1;
  p.router.w2 = w2;
  p.router.b2 = &b2;
  p.router.hidden = hidden;
  p.router.embed_dim = d;
  p.router.alpha_max = 3.f;
  check(taro::taro_step_cpu(p, 2) == 0, "TARo step returned an error");
  check(token == 0 && alpha == 1.5f, "TARo token or alpha");

  // A top-K larger than the vocabulary is refused, not read past the row.
  p.k = 5;
  check(taro::taro_step_cpu(p, 1) != 0, "k > vocab_size was accepted");

#ifdef CONSUMER_WITH_CUDA
  // Links the CUDA entry points and the CUDA runtime (no GPU is needed to link; none to run this).
  volatile auto launch = &taro::taro_step_cuda;
  check(launch != nullptr, "taro_step_cuda did not link");
#endif
  std::printf("%s\n", failures == 0 ? "consumer: all checks passed" : "consumer: FAILED");
  return failures == 0 ? 0 : 1;
}
