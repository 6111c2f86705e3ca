// The fused step kernel for __half logits (see taro_step_kernel.cuh).
#include "taro_step_kernel.cuh"

namespace taro {
namespace cuda_detail {

const void* step_kernel_f16(int kb) { return step_kernel_for_bucket<__half>(kb); }

}  // namespace cuda_detail
}  // namespace taro
