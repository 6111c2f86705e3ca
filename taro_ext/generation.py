"""Text generation with a base LM steered by a reward LM: ``TaroGenerator`` and ``TaroLogitsProcessor``.

``TaroGenerator`` is the engine. Its decode loop, in the manner of gpt-fast:

1. Prompts are tokenised (through the chat template with ``chat=True``), left padded to one
   batch, and both models are prefilled with the attention mask and position ids
   ``cumsum(mask) - 1`` (so padded rows see the same positions as unpadded ones).
2. Each model keeps its own KV cache: ``DynamicCache`` by default, or preallocated
   ``StaticCache`` objects with ``cache="static"`` (fixed shapes; on one CUDA device the decode
   step, both forwards and the TARo step, is captured once in a CUDA graph and replayed).
3. Each step feeds the last tokens to both models and calls ``taro_step`` once on the two
   last-position logits rows. Modes: ``taro`` (the router predicts alpha per token),
   ``genarm`` (fixed ``alpha``) and ``base`` (``alpha_override=0`` through the same step, and the
   reward model is not run), so the three modes share one token-picking rule and one random stream.
4. Sampling draws one uniform per row per step from a ``torch.Generator`` seeded with ``seed`` on
   the logits' device, so every backend picks the same tokens for the same seed.
5. A row is finished at an EOS token or when its decoded text contains a stop string; the loop
   ends when every row is finished or after ``max_new_tokens`` steps. With the dynamic cache,
   finished rows are dropped from the batch (their cache rows, mask and positions), so a long
   tail of unfinished rows costs only its own rows; with the static cache (fixed shapes for the
   CUDA graph) finished rows keep being fed a pad token and their outputs are frozen.

Host synchronisation: the value checks of ``taro_step`` (NaN, rows with no finite logit) run on
the first step only (``check_inputs=False`` afterwards: each check is a device sync). The loop
then syncs once per step, to copy the picked tokens to the host for the EOS / stop-string test,
as ``transformers``' own ``generate`` does. With two models on different devices the reward
logits are copied to the base logits' device with ``non_blocking=True`` and the step runs there.

Set-up for a large base (e.g. 70B sharded with ``device_map="auto"`` over GPUs 0-6, reward model
and router on GPU 7): load the base with ``device_map="auto", max_memory={7: 0, ...}`` (or an
explicit map), the reward model with ``.to("cuda:7")``. The step runs on the device of the base
model's ``lm_head`` (the last shard); the router is moved there. Use ``cache="dynamic"`` in that
case: CUDA-graph capture here covers a single device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .router import _RouterBase
from .step import BACKENDS, StepResult, available_backends, taro_step

MODES = ("taro", "genarm", "base")
CACHES = ("dynamic", "static")


@dataclass
class GenerationOutput:
    """What ``TaroGenerator.generate`` returns, one entry per prompt.

    ``token_ids`` are the generated tokens (the EOS token included when one was generated, as in
    ``transformers``); ``alphas`` the router's alpha for each of them (GenARM: the fixed alpha; base: 0);
    ``texts`` the decoded tokens without special tokens, cut before the first stop string.
    """

    texts: list[str]
    token_ids: list[list[int]]
    alphas: list[list[float]]
    prompt_lengths: list[int] = field(default_factory=list)


def output_vocab_width(model) -> int:
    """The number of logits a causal LM produces (its possibly padded output embedding)."""
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_tokenizers(tokenizer, reward_tokenizer=None, *, base_model=None, reward_model=None) -> int:
    """Check that base and reward model share ``tokenizer``; returns the shared vocabulary size V.

    With ``reward_tokenizer`` the two vocabularies (token -> id) must be identical. Each model
    must produce at least V logits. Raises ``ValueError`` naming what differs.
    """
    vocab_size = len(tokenizer)
    if reward_tokenizer is not None:
        base_vocab, reward_vocab = tokenizer.get_vocab(), reward_tokenizer.get_vocab()
        if base_vocab != reward_vocab:
            only_base = sorted(set(base_vocab) - set(reward_vocab))
            only_reward = sorted(set(reward_vocab) - set(base_vocab))
            moved = sorted(t for t in set(base_vocab) & set(reward_vocab) if base_vocab[t] != reward_vocab[t])
            raise ValueError(
                f"the base and reward tokenizers differ (sizes {len(base_vocab)} vs {len(reward_vocab)}; "
                f"{len(only_base)} tokens only in the base one, e.g. {only_base[:3]}; {len(only_reward)} only in "
                f"the reward one, e.g. {only_reward[:3]}; {len(moved)} with different ids, e.g. {moved[:3]}): "
                f"a reward model guides a base model only through a shared tokenizer")
    for name, model in (("base_model", base_model), ("reward_model", reward_model)):
        if model is not None and output_vocab_width(model) < vocab_size:
            raise ValueError(f"{name} produces {output_vocab_width(model)} logits but the tokenizer has "
                             f"{vocab_size} tokens: the model was not built for this tokenizer")
    return vocab_size


def _device_of(module: torch.nn.Module, output: bool) -> torch.device:
    emb = module.get_output_embeddings() if output else module.get_input_embeddings()
    return emb.weight.device


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B, L], attention_mask [B, L])`` with every row right-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) - 1``, 0 on padding."""
    return (mask.cumsum(-1) - 1).clamp_min(0)


def check_mode_args(mode: str, alpha, router, reward_model, backend: str) -> None:
    """The checks on a generator's mode arguments, shared by the engines (raises naming the argument)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if mode != "base" and reward_model is None:
        raise ValueError(f"mode={mode!r} needs a reward_model")
    if mode == "taro" and not isinstance(router, _RouterBase):
        raise TypeError(f"mode='taro' needs a TopKRouter or FullLogitsRouter as router, got {type(router).__name__}")
    if mode == "genarm" and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0
                             or alpha == float("inf")):
        raise ValueError(f"alpha must be a finite float >= 0, got {alpha!r}")


def check_generate_args(prompts, max_new_tokens, temperature, stop) -> tuple[list[str], list[str]]:
    """The checks on ``generate``'s arguments, shared by the engines; returns ``(prompts, stop)`` as lists."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a string or a non-empty list of strings")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a float >= 0, got {temperature!r}")
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError("stop must be a string or a list of non-empty strings")
    return prompts, stop


def cut_at_stop(text: str, stop: Sequence[str]) -> Optional[str]:
    """``text`` cut before its first stop string, or None when it holds none."""
    hits = [text.find(s) for s in stop if s in text]
    return text[:min(hits)] if hits else None


class TaroGenerator:
    """Batched decoding from ``base_model`` steered by ``reward_model`` (and ``router`` in mode ``taro``).

    ``tokenizer`` is the shared tokenizer; pass ``reward_tokenizer`` to have the two vocabularies
    compared. ``vocab_size`` (default ``len(tokenizer)``) is the number of leading logit columns
    the step uses; models may have wider (padded) output embeddings. ``backend`` is passed to
    ``taro_step``. The router is moved to the device where the step runs.
    """

    def __init__(self, base_model, reward_model, router: Optional[_RouterBase], tokenizer, *, mode: str = "taro",
                 alpha: float = 1.0, backend: str = "auto", reward_tokenizer=None, vocab_size: Optional[int] = None,
                 cache: str = "dynamic", cuda_graph: bool = False):
        check_mode_args(mode, alpha, router, reward_model, backend)
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
        shared_vocab = check_tokenizers(tokenizer, reward_tokenizer, base_model=base_model,
                                        reward_model=reward_model if mode != "base" else None)
        if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                                       or not 1 <= vocab_size <= shared_vocab):
            raise ValueError(f"vocab_size must be an int in [1, {shared_vocab}] (the tokenizer's size), "
                             f"got {vocab_size!r}")
        self.vocab_size = shared_vocab if vocab_size is None else vocab_size
        if mode == "taro" and router.vocab_size < self.vocab_size:
            raise ValueError(f"the router was built for vocab_size={router.vocab_size}, below the tokenizer's "
                             f"{self.vocab_size} tokens")
        self.base_model, self.tokenizer, self.mode, self.backend, self.cache = base_model, tokenizer, mode, backend, cache
        self.reward_model = reward_model if mode != "base" else None
        self.alpha = float(alpha) if mode == "genarm" else 0.0
        self.step_device = _device_of(base_model, output=True)
        self.router = router.to(self.step_device) if mode == "taro" else None
        if backend != "auto" and backend not in available_backends(self.step_device):
            raise ValueError(f"backend={backend!r} cannot run on {self.step_device.type} here "
                             f"(available: {available_backends(self.step_device)})")
        if cuda_graph:
            devices = {_device_of(base_model, False), self.step_device}
            if self.reward_model is not None:
                devices |= {_device_of(reward_model, False), _device_of(reward_model, True)}
            if cache != "static" or len(devices) != 1 or self.step_device.type != "cuda":
                raise ValueError("cuda_graph=True needs cache='static' and both models on one CUDA device "
                                 f"(cache={cache!r}, devices={sorted(map(str, devices))})")
        self.cuda_graph = cuda_graph
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(base_model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_ids = sorted(e for e in eos if e is not None)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    # --- the one call into the step ------------------------------------------------------------
    def mix(self, base_logits: torch.Tensor, reward_logits: Optional[torch.Tensor], temperature: float,
            uniform: Optional[torch.Tensor], check_inputs: bool) -> StepResult:
        """One ``taro_step`` on the last-position logits of both models (``reward_logits`` None in mode base)."""
        if reward_logits is None:
            # Mode base: the reward term is exactly 0 when alpha == 0 (spec), so any row will do.
            reward_logits = base_logits
        else:
            reward_logits = reward_logits.to(base_logits.device, non_blocking=True)
        router = self.router if self.mode == "taro" else None
        override = None if self.mode == "taro" else self.alpha
        return taro_step(base_logits, reward_logits, router, temperature=temperature, uniform=uniform,
                         vocab_size=self.vocab_size, alpha_override=override, check_inputs=check_inputs,
                         backend=self.backend)

    # --- prompts ---------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
        """Token ids of each prompt; with ``chat`` the prompt is the user turn of the chat template."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("chat=True but the tokenizer has no chat_template")
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True) for p in prompts]
            return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [self.tokenizer(p)["input_ids"] for p in prompts]

    # --- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int = 0, stop: Optional[Sequence[str]] = None, chat: bool = False,
                 progress: Optional[Callable[[int, int], None]] = None) -> GenerationOutput:
        """Generate for a batch of prompts. ``progress(step, active_rows)`` is called after each step."""
        prompts, stop = check_generate_args(prompts, max_new_tokens, temperature, stop)
        prompt_ids = self.encode(prompts, chat)
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt must encode to at least one token")
        ids, mask = left_pad(prompt_ids, self.pad_id)
        batch = len(prompts)
        decoder = (_StaticDecoder(self, batch, ids.shape[1] + max_new_tokens) if self.cache == "static"
                   else _DynamicDecoder(self))
        rng = torch.Generator(device=self.step_device).manual_seed(seed)

        def draw(rows):
            # One uniform per prompt per step, whatever rows are still decoded: a row's draws do not
            # depend on when other rows finish, so both caches and every backend pick the same tokens.
            if temperature == 0:
                return None
            u = torch.rand(batch, generator=rng, device=self.step_device)
            return u if len(rows) == batch else u[torch.tensor(rows, device=u.device)]

        out_ids = [[] for _ in range(batch)]
        out_alpha = [[] for _ in range(batch)]
        texts: list[Optional[str]] = [None] * batch
        finished = [False] * batch
        eos = set(self.eos_ids)
        rows = list(range(batch))  # the prompt behind each row of the decoder's batch
        step = decoder.prefill(ids, mask, temperature, draw(rows))
        for n in range(max_new_tokens):
            # One device -> host copy per step: tokens and alphas together.
            host = torch.stack([step.tokens.double(), step.alpha.double()]).cpu()
            tokens, alphas = host[0].long().tolist(), host[1].tolist()
            for row, token, alpha in zip(rows, tokens, alphas):
                if finished[row]:
                    continue
                out_ids[row].append(token)
                out_alpha[row].append(alpha)
                if token in eos:
                    finished[row] = True
                elif stop:
                    cut = cut_at_stop(self.tokenizer.decode(out_ids[row], skip_special_tokens=True), stop)
                    if cut is not None:
                        texts[row], finished[row] = cut, True
            if progress is not None:
                progress(n + 1, batch - sum(finished))
            if all(finished) or n + 1 == max_new_tokens:
                break
            if decoder.drops_finished_rows and any(finished[row] for row in rows):
                keep = [i for i, row in enumerate(rows) if not finished[row]]
                decoder.keep_rows(keep)
                rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
            feed = torch.tensor([self.pad_id if finished[row] else t for row, t in zip(rows, tokens)],
                                dtype=torch.long)
            step = decoder.decode(feed, temperature, draw(rows))
        texts = [t if t is not None else self.tokenizer.decode(ids_, skip_special_tokens=True)
                 for t, ids_ in zip(texts, out_ids)]
        return GenerationOutput(texts, out_ids, out_alpha, [len(p) for p in prompt_ids])


def _forward_last(model, cache, ids, mask, positions) -> torch.Tensor:
    """Logits at the last position, ``[B, V]``; inputs are moved to the model's input device."""
    dev = _device_of(model, output=False)
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev), cache=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]


class _DynamicDecoder:
    """``DynamicCache`` per model; the attention mask grows by one column per step."""

    drops_finished_rows = True

    def __init__(self, gen: TaroGenerator):
        from transformers import DynamicCache

        self.gen = gen
        self.models = [(m, DynamicCache(config=m.config)) for m in (gen.base_model, gen.reward_model) if m is not None]

    def _run(self, ids, temperature, uniform, check_inputs):
        logits = [_forward_last(m, c, ids, self.mask, self.positions) for m, c in self.models]
        return self.gen.mix(logits[0], logits[1] if len(logits) > 1 else None, temperature, uniform, check_inputs)

    def prefill(self, ids, mask, temperature, uniform):
        self.mask, self.positions = mask, positions_from_mask(mask)
        # Validate the logits' values once; later steps skip the (synchronising) value checks.
        return self._run(ids, temperature, uniform, check_inputs=True)

    def keep_rows(self, keep: list[int]):
        """Drop every batch row not in ``keep`` (finished prompts) from the caches, mask and positions."""
        for model, cache in self.models:
            cache.batch_select_indices(torch.tensor(keep, device=_device_of(model, output=False)))
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.positions = self.mask[index], self.positions[index]

    def decode(self, tokens, temperature, uniform):
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._run(tokens[:, None], temperature, uniform, check_inputs=False)


class _StaticDecoder:
    """Preallocated ``StaticCache`` per model and fixed-shape decode inputs (``[B, 1]`` tokens,
    ``[B, max_len]`` attention mask): the decode step reads only these buffers, so on CUDA it is
    captured once in a CUDA graph (both forwards and the TARo step) and replayed for every token,
    as in gpt-fast. On CPU the same step runs eagerly.
    """

    drops_finished_rows = False  # fixed shapes: finished rows are fed a pad token instead

    def __init__(self, gen: TaroGenerator, batch: int, max_len: int):
        from transformers import StaticCache

        self.gen, self.max_len = gen, max_len
        self.models = [(m, StaticCache(config=m.config, max_cache_len=max_len))
                       for m in (gen.base_model, gen.reward_model) if m is not None]
        dev = _device_of(gen.base_model, output=False)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(batch, max_len, dtype=torch.long, device=dev)
        self.uniform = torch.zeros(batch, dtype=torch.float32, device=gen.step_device)
        self.graph = None
        self.graph_out: Optional[StepResult] = None

    def _logits(self, ids, mask, positions):
        logits = [_forward_last(m, c, ids, mask, positions) for m, c in self.models]
        return logits[0], (logits[1] if len(logits) > 1 else None)

    def prefill(self, ids, mask, temperature, uniform):
        length = ids.shape[1]
        self.length = length
        self.mask[:, :length] = mask.to(self.mask.device)
        self.positions.copy_(positions_from_mask(mask)[:, -1:].to(self.positions.device))
        base, reward = self._logits(ids, self.mask[:, :length], positions_from_mask(mask))
        return self.gen.mix(base, reward, temperature, uniform, check_inputs=True)

    def _step(self, temperature):
        base, reward = self._logits(self.tokens, self.mask, self.positions)
        return self.gen.mix(base, reward, temperature, self.uniform if temperature > 0 else None,
                            check_inputs=False)

    def decode(self, tokens, temperature, uniform):
        self.tokens.copy_(tokens[:, None].to(self.tokens.device), non_blocking=True)
        self.positions.add_(1)
        self.mask[:, self.length] = 1
        self.length += 1
        if uniform is not None:
            self.uniform.copy_(uniform)
        if not self.gen.cuda_graph:
            return self._step(temperature)
        if self.graph is None:
            self._capture(temperature)
        self.graph.replay()
        return self.graph_out

    def _capture(self, temperature):
        # The first decode step runs eagerly on a side stream (warm-up, as torch.cuda.graphs asks);
        # its writes (cache slot, cache length) are then rolled back so the replay redoes that step.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(temperature)
            for _, cache in self.models:
                for layer in cache.layers:
                    layer.cumulative_length.sub_(1)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.graph_out = self._step(temperature)


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
        if vocab_size is None:
            if router is None:
                raise ValueError("vocab_size is required with alpha (use len(tokenizer))")
            vocab_size = router.vocab_size
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

        dev = _device_of(self.reward_model, output=False)
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
        reward_logits = _forward_last(self.reward_model, self.cache, new, self.mask, positions)
        self.prev_ids = ids
        if self.router is not None:
            self.router.to(scores.device)
        result = taro_step(scores, reward_logits.to(scores.device), self.router, vocab_size=self.vocab_size,
                           alpha_override=self.alpha, return_logprobs=True, check_inputs=False,
                           backend=self.backend)
        self.alphas.append(result.alpha)
        mixed = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        mixed[:, :self.vocab_size] = result.logprobs
        return mixed.to(scores.dtype)


__all__ = ["TaroGenerator", "GenerationOutput", "TaroLogitsProcessor", "check_tokenizers", "left_pad",
           "positions_from_mask", "output_vocab_width", "MODES"]
