"""TARo / GenARM as a ``transformers`` logits processor (``TaroLogitsProcessor``)."""
from __future__ import annotations

from typing import Optional

import torch

from .lm_forward import device_of, forward_last
from .padding import positions_from_mask
from .router import _RouterBase
from .step import BACKENDS, check_alpha, taro_step
from .validate import as_int


class TaroLogitsProcessor:
    """TARo / GenARM as a ``transformers`` logits processor:
    ``base_model.generate(..., logits_processor=LogitsProcessorList([TaroLogitsProcessor(reward, router)]))``.

    Each call runs the reward model incrementally (its own ``DynamicCache``) on the tokens generated
    so far and returns the mixed log-probs ``log_softmax(lp_b + alpha lp_r)`` over the first
    ``vocab_size`` columns (padded columns -inf), so HF's greedy search, sampling (its temperature,
    top-k/top-p warpers) and beam search work on them. Differences from ``TaroGenerator``:

    * the token is picked by HF, not by the fused step (the step computes the mixed row and its
      own pick is discarded): sampling uses HF's random stream, so sampled tokens differ from
      ``TaroGenerator`` for the same seed (greedy tokens agree);
    * HF's processor interface has no attention mask: left padding is recognised as leading
      ``pad_token_id`` tokens of the prompt (pass the tokenizer's pad id);
    * beam search reorders beams between steps; the processor recognises the reordering by
      matching each row's prefix with the previous step's rows and reorders the reward cache
      (one extra host sync per step).

    ``router=None`` with ``alpha`` gives GenARM. ``alphas`` holds the alpha of every step ([B] each).
    A new ``generate`` call (a prompt that does not continue the previous rows) resets the state.
    """

    def __init__(self, reward_model, router: Optional[_RouterBase] = None, *, alpha: Optional[float] = None,
                 vocab_size: Optional[int] = None, pad_token_id: Optional[int] = None, backend: str = "auto"):
        if router is None and alpha is None:
            raise ValueError("give a router (TARo) or alpha (GenARM)")
        if router is not None and alpha is not None:
            raise ValueError("give either a router or alpha, not both")
        if router is not None and not isinstance(router, _RouterBase):
            raise TypeError(f"router must be a TopKRouter or FullLogitsRouter, got {type(router).__name__}")
        if alpha is not None:
            alpha = check_alpha("alpha", alpha)
        if not callable(getattr(reward_model, "get_input_embeddings", None)):
            raise TypeError(f"reward_model must be a transformers causal LM, got {type(reward_model).__name__}")
        if backend not in ("auto",) + BACKENDS:
            raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
        if pad_token_id is not None:
            pad_token_id = as_int("pad_token_id", pad_token_id, minimum=0)
        if vocab_size is None:
            if router is None:
                raise ValueError("vocab_size is required with alpha (use len(tokenizer))")
            vocab_size = router.vocab_size
        vocab_size = as_int("vocab_size", vocab_size, minimum=1)
        self.reward_model, self.router, self.alpha = reward_model, router, alpha
        self.vocab_size, self.pad_token_id, self.backend = vocab_size, pad_token_id, backend
        self.reset()

    def reset(self):
        self.cache = None
        self.prev_ids: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.alphas: list[torch.Tensor] = []

    def _continues(self, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        """Indices of the previous rows that ``input_ids[:, :-1]`` continue, or None (a new batch)."""
        prev = self.prev_ids
        if prev is None or input_ids.shape[1] != prev.shape[1] + 1 or input_ids.shape[0] != prev.shape[0]:
            return None
        same = (input_ids[:, None, :-1] == prev[None]).all(-1)  # [N, N]: row i continues previous row j
        if not bool(same.any(-1).all()):
            return None
        return same.int().argmax(-1)

    @torch.inference_mode()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from transformers import DynamicCache

        dev = device_of(self.reward_model, output=False)
        ids = input_ids.to(dev)
        source = self._continues(ids)
        if source is None:
            self.reset()
            self.cache = DynamicCache(config=self.reward_model.config)
            if self.pad_token_id is None:
                self.mask = torch.ones_like(ids)
            else:
                self.mask = (ids != self.pad_token_id).long().cummax(-1).values  # leading pads are padding
            new = ids
        else:
            if not bool((source == torch.arange(len(source), device=dev)).all()):
                self.cache.reorder_cache(source)
                self.mask = self.mask[source]
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(ids), 1)], dim=1)
            new = ids[:, -1:]
        positions = positions_from_mask(self.mask)[:, -new.shape[1]:]
        reward_logits = forward_last(self.reward_model, self.cache, new, self.mask, positions)
        self.prev_ids = ids
        if self.router is not None:
            self.router.to(scores.device)
        # Value checks (NaN logits, the router's weights) once per generate call: each is a device sync.
        result = taro_step(scores, reward_logits.to(scores.device), self.router, vocab_size=self.vocab_size,
                           alpha_override=self.alpha, return_logprobs=True, check_inputs=source is None,
                           backend=self.backend)
        self.alphas.append(result.alpha)
        mixed = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        mixed[:, :self.vocab_size] = result.logprobs
        return mixed.to(scores.dtype)


__all__ = ["TaroLogitsProcessor"]
