// Torch binding of the fused step: the op schema and the CPU implementation.
// The CUDA implementation registers itself in taro_ops_cuda.cpp when built.
#include <ATen/Parallel.h>  // at::get_num_threads: the kernel uses torch's thread count
#include <torch/library.h>

#include "step_params.h"

namespace taro {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_step_cpu(
    const at::Tensor& base, const at::Tensor& reward, const std::optional<at::Tensor>& embed,
    const std::optional<at::Tensor>& w1, const std::optional<at::Tensor>& b1,
    const std::optional<at::Tensor>& w2, const std::optional<at::Tensor>& b2, double alpha_max,
    int64_t k, int64_t vocab_size, double temperature, const std::optional<at::Tensor>& uniform,
    std::optional<double> alpha_override, bool return_logprobs) {
  StepParams p;
  StepOutputs out = make_step_params(p, base, reward, embed, w1, b1, w2, b2, alpha_max, k, vocab_size,
                                     temperature, uniform, alpha_override, return_logprobs,
                                     /*token_logprob_optional=*/true);
  const int rc = taro_step_cpu(p, at::get_num_threads());
  TORCH_CHECK(rc == 0, "taro_step_cpu failed with code ", rc);
  return {out.tokens, out.alpha, out.token_logprobs, out.logprobs};
}

}  // namespace taro

// Outputs (tokens, alpha, token_logprobs, logprobs): logprobs is [B, V] when return_logprobs,
// else [B, 0]; token_logprobs is defined only when return_logprobs (without it the CPU kernel
// skips the normaliser of the mixed score, the one exp pass greedy decoding does not need,
// and returns NaN there).
TORCH_LIBRARY(taro_ext, m) {
  m.def(
      "fused_step(Tensor base_logits, Tensor reward_logits, Tensor? embed, Tensor? w1, Tensor? b1, "
      "Tensor? w2, Tensor? b2, float alpha_max, int k, int vocab_size, float temperature, "
      "Tensor? uniform, float? alpha_override, bool return_logprobs) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(taro_ext, CPU, m) { m.impl("fused_step", &taro::fused_step_cpu); }
