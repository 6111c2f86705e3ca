"""taro_ext: TARo (Token-level Adaptive Routing) test-time alignment for PyTorch.

A frozen base LM is steered token by token by an autoregressive reward LM; a small
router predicts per token how strongly the reward log-probs are mixed in:
``s = lp_base + alpha_t * lp_reward``. The step is specified in TARO_SPEC.md and
implemented by a PyTorch reference and fused CPU (C++), CUDA and Triton kernels.
"""
import torch  # noqa: F401  (must precede the compiled module: it loads libc10)

from .router import FullLogitsRouter, TopKRouter, load_router
from .step import BACKENDS, StepResult, available_backends, genarm_step, taro_step
from .generation import GenerationOutput, TaroGenerator
from .logits_processor import TaroLogitsProcessor

__version__ = "0.1.0"

__all__ = ["taro_step", "genarm_step", "available_backends", "StepResult", "BACKENDS", "TopKRouter",
           "FullLogitsRouter", "load_router", "TaroGenerator", "TaroLogitsProcessor",
           "GenerationOutput", "__version__"]
