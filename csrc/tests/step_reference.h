// The TARo step of ../../shared/TARO_SPEC.md for one row, as a plain double-precision loop
// written for reading: log-softmax, entropy, top-K by stable sort, router MLP, mixed score,
// greedy or inverse-CDF pick, log-probs. Shared by the native tests (test_native.cpp,
// fuzz_native.cpp); it includes only the kernel's C interface, never its internals.
//
// Defined only for rows the spec accepts: no NaN or +inf among the first `vocab` logits, at
// least one finite logit per model and at least one finite mixed score.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "taro_step.h"

namespace taro_test {

// Router weights (design topk), fp32 (a bf16 embedding table is passed to the kernel as
// its exact fp32 values here).
struct Router {
  int k = 0, d = 0, hidden = 0;
  float alpha_max = 2.0f;
  std::vector<float> embed, w1, b1, w2, b2;
};

struct RowResult {
  int64_t token = -1;
  double alpha = 0, token_logprob = 0;
  std::vector<double> logprobs;
};

// The spec for one row, in double. `router == nullptr` means alpha = alpha_override.
inline RowResult reference_row(const float* xb, const float* xr, int vocab, const Router* router,
                               double alpha_override, double temperature, double uniform) {
  auto log_softmax = [vocab](const float* x) {
    double m = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < vocab; ++j) m = std::max(m, static_cast<double>(x[j]));
    double sum = 0;
    for (int j = 0; j < vocab; ++j) sum += std::exp(x[j] - m);
    std::vector<double> lp(vocab);
    for (int j = 0; j < vocab; ++j) lp[j] = x[j] - m - std::log(sum);
    return lp;
  };
  const std::vector<double> lp_b = log_softmax(xb), lp_r = log_softmax(xr);
  RowResult out;
  out.alpha = alpha_override;
  if (router != nullptr) {
    auto entropy = [vocab](const std::vector<double>& lp) {
      double h = 0;
      for (int j = 0; j < vocab; ++j) h -= std::isinf(lp[j]) ? 0.0 : std::exp(lp[j]) * lp[j];
      return h;
    };
    auto topk_ids = [&](const std::vector<double>& lp) {
      std::vector<int> ids(vocab);
      std::iota(ids.begin(), ids.end(), 0);
      std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return lp[a] > lp[b]; });
      ids.resize(router->k);
      return ids;
    };
    const std::vector<int> ib = topk_ids(lp_b), ir = topk_ids(lp_r);
    std::vector<double> x;
    for (int i : ib) x.push_back(std::max(lp_b[i], double{taro::kFeatureLogprobFloor}));
    for (int i : ir) x.push_back(std::max(lp_r[i], double{taro::kFeatureLogprobFloor}));
    x.push_back(entropy(lp_b));
    x.push_back(entropy(lp_r));
    for (const std::vector<int>* ids : {&ib, &ir}) {
      for (int i : *ids) {
        for (int c = 0; c < router->d; ++c) x.push_back(router->embed[i * router->d + c]);
      }
    }
    double u = router->b2[0];
    for (int h = 0; h < router->hidden; ++h) {
      double pre = router->b1[h];
      for (size_t i = 0; i < x.size(); ++i) pre += router->w1[h * x.size() + i] * x[i];
      u += router->w2[h] * pre / (1 + std::exp(-pre));
    }
    out.alpha = router->alpha_max / (1 + std::exp(-u));
  }
  std::vector<double> z(vocab);
  for (int j = 0; j < vocab; ++j) {
    const double s = lp_b[j] + (out.alpha == 0 ? 0.0 : out.alpha * lp_r[j]);
    z[j] = temperature > 0 ? s / temperature : s;
  }
  const double zmax = *std::max_element(z.begin(), z.end());
  double total = 0;
  for (int j = 0; j < vocab; ++j) total += std::exp(z[j] - zmax);
  if (temperature == 0) {
    out.token = std::max_element(z.begin(), z.end()) - z.begin();  // first maximal element
  } else {
    double cum = 0;
    for (int j = 0; j < vocab && out.token < 0; ++j) {
      cum += std::exp(z[j] - zmax);
      if (cum > uniform * total) out.token = j;
    }
    for (int j = vocab - 1; j >= 0 && out.token < 0; --j) {
      if (std::exp(z[j] - zmax) > 0) out.token = j;
    }
  }
  for (int j = 0; j < vocab; ++j) out.logprobs.push_back(z[j] - zmax - std::log(total));
  out.token_logprob = out.logprobs[out.token];
  return out;
}

}  // namespace taro_test
