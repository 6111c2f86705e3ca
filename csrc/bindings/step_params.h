// Tensor -> taro::StepParams conversion shared by the CPU and CUDA torch bindings.
// The Python API (taro_ext/step.py) validates inputs with messages that name the
// argument; these checks guard the raw op against direct misuse.
#pragma once

#include <ATen/ATen.h>
#include <algorithm>
#include <limits>
#include <optional>

#include "../taro_step.h"

namespace taro {

inline DType to_taro_dtype(at::ScalarType t, const char* arg) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK_TYPE(false, arg, " must be float32, bfloat16 or float16, got ", t);
  }
  return DType::kFloat32;
}

struct StepOutputs {
  at::Tensor tokens, alpha, token_logprobs, logprobs;
};

// Allocates the outputs on the logits' device and fills `params` with pointers into
// the inputs and outputs. `logprobs` is [B, V] when requested, else [B, 0].
// `token_logprobs` is always [B]; with `token_logprob_optional` and no logprobs requested,
// the kernel is told not to compute it (nullptr) and the tensor holds NaN.
inline StepOutputs make_step_params(
    StepParams& p, const at::Tensor& base, const at::Tensor& reward,
    const std::optional<at::Tensor>& embed, const std::optional<at::Tensor>& w1,
    const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2,
    const std::optional<at::Tensor>& b2, double alpha_max, int64_t k, int64_t vocab_size,
    double temperature, const std::optional<at::Tensor>& uniform,
    std::optional<double> alpha_override, bool return_logprobs, bool token_logprob_optional = false) {
  TORCH_CHECK_VALUE(base.dim() == 2 && reward.dim() == 2,
                    "base_logits and reward_logits must be 2-D [B, V]");
  TORCH_CHECK_VALUE(base.size(0) == reward.size(0), "base_logits and reward_logits batch sizes differ");
  TORCH_CHECK_VALUE(base.device() == reward.device(), "base_logits and reward_logits devices differ");
  TORCH_CHECK_TYPE(base.scalar_type() == reward.scalar_type(),
                   "base_logits and reward_logits must share a dtype");
  // Rows may overlap or repeat (stride(0) < V: an expanded batch, as_strided): the kernels
  // only read them. A width-1 dim has no meaningful stride.
  TORCH_CHECK_VALUE(base.size(1) <= 1 || base.stride(1) == 1,
                    "base_logits rows must be contiguous in the last dim (stride(1) == 1)");
  TORCH_CHECK_VALUE(reward.size(1) <= 1 || reward.stride(1) == 1,
                    "reward_logits rows must be contiguous in the last dim (stride(1) == 1)");
  TORCH_CHECK_VALUE(vocab_size >= 1 && base.size(1) >= vocab_size && reward.size(1) >= vocab_size,
                    "vocab_size must be in [1, logits width]");
  TORCH_CHECK_VALUE(k >= 1 && k <= vocab_size, "k must be in [1, vocab_size]");
  TORCH_CHECK_VALUE(temperature >= 0, "temperature must be >= 0");
  const int64_t B = base.size(0);
  const auto dev = base.device();

  p.base_logits = base.data_ptr();
  p.reward_logits = reward.data_ptr();
  p.logits_dtype = to_taro_dtype(base.scalar_type(), "base_logits");
  p.batch = B;
  p.vocab_size = vocab_size;
  p.base_stride = B > 0 ? base.stride(0) : 0;
  p.reward_stride = B > 0 ? reward.stride(0) : 0;
  p.k = static_cast<int32_t>(k);
  p.temperature = static_cast<float>(temperature);
  if (temperature > 0) {
    TORCH_CHECK_VALUE(uniform.has_value(), "uniform is required when temperature > 0");
    const auto& u = *uniform;
    TORCH_CHECK_VALUE(u.dim() == 1 && u.size(0) == B && u.scalar_type() == at::kFloat &&
                          u.is_contiguous() && u.device() == dev,
                      "uniform must be a contiguous float32 [B] tensor on the logits' device");
    p.uniform = u.data_ptr<float>();
  }
  p.use_alpha_override = alpha_override.has_value();
  p.alpha_override = alpha_override.has_value() ? static_cast<float>(*alpha_override) : 0.0f;
  if (!p.use_alpha_override) {
    TORCH_CHECK_VALUE(embed && w1 && b1 && w2 && b2, "router weights are required without alpha_override");
    const int64_t H = w1->size(0);
    const int64_t d = embed->dim() == 2 ? embed->size(1) : -1;
    TORCH_CHECK_VALUE(embed->dim() == 2 && embed->size(0) >= vocab_size && embed->is_contiguous() &&
                          embed->device() == dev,
                      "router embed must be a contiguous [V, d] tensor with V >= vocab_size");
    TORCH_CHECK_TYPE(embed->scalar_type() == at::kFloat || embed->scalar_type() == at::kBFloat16,
                     "router embed must be float32 or bfloat16");
    TORCH_CHECK_VALUE(w1->dim() == 2 && w1->size(1) == router_input_dim(k, d),
                      "router w1 must be [H, 2K + 2 + 2Kd]");
    for (const at::Tensor* t : {&*w1, &*b1, &*w2, &*b2}) {
      TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, "router w1, b1, w2, b2 must be float32");
      TORCH_CHECK_VALUE(t->device() == dev && t->is_contiguous(), "router weights must be contiguous on the logits' device");
    }
    TORCH_CHECK_VALUE(b1->numel() == H && w2->numel() == H && b2->numel() == 1,
                      "router b1, w2 must have H elements and b2 one");
    p.router.embed = embed->data_ptr();
    p.router.embed_dtype = to_taro_dtype(embed->scalar_type(), "embed");
    p.router.w1 = w1->data_ptr<float>();
    p.router.b1 = b1->data_ptr<float>();
    p.router.w2 = w2->data_ptr<float>();
    p.router.b2 = b2->data_ptr<float>();
    p.router.hidden = static_cast<int32_t>(H);
    p.router.embed_dim = static_cast<int32_t>(d);
    p.router.alpha_max = static_cast<float>(alpha_max);
  }

  StepOutputs out;
  auto f32 = base.options().dtype(at::kFloat);
  out.tokens = at::empty({B}, base.options().dtype(at::kLong));
  out.alpha = at::empty({B}, f32);
  out.token_logprobs = at::empty({B}, f32);
  out.logprobs = at::empty({B, return_logprobs ? vocab_size : 0}, f32);
  p.tokens = out.tokens.data_ptr<int64_t>();
  p.alpha = out.alpha.data_ptr<float>();
  if (token_logprob_optional && !return_logprobs) {
    // Written through the pointer (host memory: only the CPU binding passes true): a fill_
    // goes through the dispatcher, about a microsecond of a small step's fixed cost.
    std::fill_n(out.token_logprobs.data_ptr<float>(), B, std::numeric_limits<float>::quiet_NaN());
  } else {
    p.token_logprobs = out.token_logprobs.data_ptr<float>();
  }
  p.logprobs = return_logprobs ? out.logprobs.data_ptr<float>() : nullptr;
  return out;
}

}  // namespace taro
