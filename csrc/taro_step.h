// The TARo decode step: framework-free interface shared by the CPU and CUDA kernels.
//
// This header includes no torch and no CUDA header, so C++ decoders can link the
// kernels (libtaro_kernels, built by CMakeLists.txt) without PyTorch. The contract
// these kernels compute is ../shared/TARO_SPEC.md; docs/SPEC_CHOICES in README.md
// lists the points where the spec was silent and what we chose.
#pragma once

#include <cstddef>
#include <cstdint>

namespace taro {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// Router features use log-prob values clamped from below at this floor, so that
// masked (-inf) or huge negative entries in a top-K list give finite features.
constexpr float kFeatureLogprobFloor = -100.0f;

// Router weights for design `topk`. All fp32 except `embed`, which may be bf16.
struct RouterWeights {
  const void* embed = nullptr;  // [V_embed, embed_dim], row-major; V_embed >= vocab_size
  DType embed_dtype = DType::kFloat32;
  const float* w1 = nullptr;  // [hidden, 2K + 2 + 2*K*embed_dim], row-major
  const float* b1 = nullptr;  // [hidden]
  const float* w2 = nullptr;  // [hidden]
  const float* b2 = nullptr;  // [] (a device scalar: reading it on the host would sync)
  int32_t hidden = 0;
  int32_t embed_dim = 0;
  float alpha_max = 2.0f;
};

// One decode step over a batch of rows. Pointers are host pointers for the CPU
// kernel and device pointers for the CUDA kernel.
struct StepParams {
  const void* base_logits = nullptr;    // [batch, >= vocab_size], row stride base_stride
  const void* reward_logits = nullptr;  // [batch, >= vocab_size], row stride reward_stride
  DType logits_dtype = DType::kFloat32;  // both logits tensors share one dtype
  int64_t batch = 0;
  int64_t vocab_size = 0;
  int64_t base_stride = 0;    // elements between consecutive rows
  int64_t reward_stride = 0;  // elements between consecutive rows
  int32_t k = 16;             // top-K size, 1 <= k <= vocab_size
  float temperature = 0.0f;   // 0: greedy
  const float* uniform = nullptr;  // [batch] in [0, 1); required when temperature > 0
  bool use_alpha_override = false;  // true: skip the router (GenARM)
  float alpha_override = 0.0f;
  RouterWeights router;  // ignored when use_alpha_override

  // Outputs.
  int64_t* tokens = nullptr;          // [batch]
  float* alpha = nullptr;             // [batch]
  float* token_logprobs = nullptr;    // [batch] or nullptr (not requested: greedy then needs no exp)
  float* logprobs = nullptr;          // [batch, vocab_size] or nullptr (not requested)
};

// Number of router input features for top-K size k and embedding width d.
inline int64_t router_input_dim(int64_t k, int64_t d) { return 2 * k + 2 + 2 * k * d; }

// CPU kernel: one call, on up to num_threads threads of its own pool, whose idle threads
// sleep (num_threads <= 0: the hardware's thread count). Rows may overlap (any stride >= 0).
// Returns 0 on success, a non-zero code for parameters it cannot handle. Logit values are
// not checked (the Python API's check_inputs does that): a row with NaN or +inf among its
// first vocab_size logits, or with no finite mixed score, gets some token in [0, vocab_size)
// and unspecified alpha and log-probs; the other rows are unaffected
// (csrc/tests/fuzz_native.cpp holds the kernel to this).
int taro_step_cpu(const StepParams& params, int num_threads);

}  // namespace taro
