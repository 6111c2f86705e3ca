// The fused step kernel for float logits (see taro_step_kernel.cuh).
#include "taro_step_kernel.cuh"

namespace taro {
namespace cuda_detail {

const void* step_kernel_f32(int kb) { return step_kernel_for_bucket<float>(kb); }

}  // namespace cuda_detail
}  // namespace taro
