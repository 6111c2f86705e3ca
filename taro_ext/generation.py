"""Text generation with a base LM steered by a reward LM: the ``TaroGenerator`` engine (the same
mix inside ``transformers``' own ``generate`` is ``logits_processor.TaroLogitsProcessor``).

The engine's decode loop, in the manner of gpt-fast:

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
4. Sampling draws one uniform per prompt per step (``uniform_draws``) from ``torch.Generator`` objects
   on the logits' device, so every backend picks the same tokens for the same seed. ``seed`` an int:
   one stream for the batch, so a prompt's samples depend on its slot in the batch (the same prompt
   twice gives two samples). ``seed`` a list, one per prompt: a stream per prompt, so a prompt's
   samples depend on its own seed only, not on the other prompts or its slot.
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
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from .lm_forward import device_of, forward_last
from .padding import left_pad, positions_from_mask
from .router import _RouterBase
from .step import BACKENDS, StepResult, available_backends, check_alpha, check_temperature, taro_step
from .validate import as_bool, as_int

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


def check_mode_args(mode: str, alpha, router, reward_model, backend: str) -> float:
    """The checks on a generator's mode arguments, shared by the engines (raises naming the argument).

    Returns the alpha the step uses: the checked fixed ``alpha`` in mode ``genarm``, else 0.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if mode != "base" and reward_model is None:
        raise ValueError(f"mode={mode!r} needs a reward_model")
    if mode == "taro" and not isinstance(router, _RouterBase):
        raise TypeError(f"mode='taro' needs a TopKRouter or FullLogitsRouter as router, got {type(router).__name__}")
    return check_alpha("alpha", alpha) if mode == "genarm" else 0.0


def check_vocab_size(vocab_size, shared_vocab: int, mode: str, router, source: str) -> int:
    """The vocabulary the step uses (default: ``shared_vocab``, the models' shared one), checked
    against it and, in mode ``taro``, against the router's; ``source`` names where
    ``shared_vocab`` came from in the error ("the tokenizer's", "the GGUF vocabulary's")."""
    if vocab_size is not None:
        vocab_size = as_int("vocab_size", vocab_size, minimum=1, maximum=shared_vocab)
    vocab_size = shared_vocab if vocab_size is None else vocab_size
    if mode == "taro" and router.vocab_size < vocab_size:
        raise ValueError(f"the router was built for vocab_size={router.vocab_size}, below {source} "
                         f"{vocab_size} tokens")
    return vocab_size


class GenerateArgs(NamedTuple):
    """``generate``'s arguments as checked by ``check_generate_args``."""

    prompts: list[str]
    max_new_tokens: int
    temperature: float
    seed: int | list[int]
    stop: list[str]
    truncate_prompts: bool


def check_generate_args(prompts, max_new_tokens, temperature, seed, stop, truncate_prompts) -> GenerateArgs:
    """The checks on ``generate``'s arguments, shared by the engines; prompts and stop come back as lists."""
    if isinstance(prompts, str):
        prompts = [prompts]
    elif not isinstance(prompts, Sequence) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a string or a non-empty list of strings, got {prompts!r:.80}")
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, minimum=1)
    temperature = check_temperature(temperature)
    # torch.Generator.manual_seed takes [-2**63, 2**64); seeds are non-negative here.
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != len(prompts):
            raise ValueError(f"seed: a list of {len(seed)} seeds for {len(prompts)} prompts (one per prompt, or one int)")
        seed = [as_int(f"seed[{i}]", s, minimum=0, maximum=2 ** 64 - 1) for i, s in enumerate(seed)]
    else:
        seed = as_int("seed", seed, minimum=0, maximum=2 ** 64 - 1)
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise TypeError(f"stop must be a string or a list of non-empty strings, got {stop!r:.80}")
    if any(not s for s in stop):
        raise ValueError("stop strings must be non-empty")
    truncate_prompts = as_bool("truncate_prompts", truncate_prompts)
    return GenerateArgs(list(prompts), max_new_tokens, temperature, seed, list(stop), truncate_prompts)


def uniform_draws(seed: int | list[int], batch: int, device) -> Callable[[list[int]], torch.Tensor]:
    """``draw(rows)``: the sampling uniforms of one step for the prompts ``rows`` still decoded, one per
    prompt per step. An int ``seed`` is one stream: each step takes ``batch`` draws whatever rows are
    left, so a row's draws do not depend on when other rows finish. A list (one seed per prompt) is a
    stream per prompt: a prompt's t-th token takes its own t-th draw."""
    if isinstance(seed, int):
        rng = torch.Generator(device=device).manual_seed(seed)

        def draw(rows):
            u = torch.rand(batch, generator=rng, device=device)
            return u if len(rows) == batch else u[torch.tensor(rows, device=u.device)]
    else:
        rngs = [torch.Generator(device=device).manual_seed(s) for s in seed]

        def draw(rows):
            return torch.cat([torch.rand(1, generator=rngs[r], device=device) for r in rows])
    return draw


def fit_context(prompt_ids: list[list[int]], max_new_tokens: int, limit: Optional[int], limit_source: str,
                truncate: bool) -> list[list[int]]:
    """``prompt_ids`` checked against a context of ``limit`` positions (None: no limit; ``limit_source``
    names where it comes from) with room for ``max_new_tokens``; a prompt too long is an error, or
    with ``truncate`` keeps its last tokens."""
    empty = [i for i, p in enumerate(prompt_ids) if len(p) == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no token (every prompt needs at least one)")
    if limit is None:
        return prompt_ids
    if max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the models' "
                         f"context of {limit} positions ({limit_source})")
    room = limit - max_new_tokens
    too_long = [i for i, p in enumerate(prompt_ids) if len(p) > room]
    if too_long and not truncate:
        i = too_long[0]
        raise ValueError(f"prompt {i} has {len(prompt_ids[i])} tokens; with max_new_tokens={max_new_tokens} "
                         f"that exceeds the models' context of {limit} positions ({limit_source}). Shorten it, lower "
                         f"max_new_tokens, or pass truncate_prompts=True (--truncate-prompts; keeps the last {room} tokens)")
    return [p[len(p) - room:] if len(p) > room else p for p in prompt_ids]


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
        alpha = check_mode_args(mode, alpha, router, reward_model, backend)
        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
        shared_vocab = check_tokenizers(tokenizer, reward_tokenizer, base_model=base_model,
                                        reward_model=reward_model if mode != "base" else None)
        self.vocab_size = check_vocab_size(vocab_size, shared_vocab, mode, router, "the tokenizer's")
        self.base_model, self.tokenizer, self.mode, self.backend, self.cache = base_model, tokenizer, mode, backend, cache
        self.reward_model = reward_model if mode != "base" else None
        self.alpha = alpha
        self.step_device = device_of(base_model, output=True)
        self.router = router.to(self.step_device) if mode == "taro" else None
        if backend != "auto" and backend not in available_backends(self.step_device):
            raise ValueError(f"backend={backend!r} cannot run on {self.step_device.type} here "
                             f"(available: {available_backends(self.step_device)})")
        if cuda_graph:
            devices = {device_of(base_model, False), self.step_device}
            if self.reward_model is not None:
                devices |= {device_of(reward_model, False), device_of(reward_model, True)}
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

    def context_length(self) -> Optional[int]:
        """The most positions the models take (the smaller ``max_position_embeddings``), or None."""
        limits = [getattr(m.config, "max_position_embeddings", None) for m in (self.base_model, self.reward_model)
                  if m is not None]
        limits = [n for n in limits if isinstance(n, int) and n > 0]
        return min(limits) if limits else None

    # --- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int | Sequence[int] = 0, stop: Optional[Sequence[str]] = None, chat: bool = False,
                 progress: Optional[Callable[[int, int], None]] = None,
                 truncate_prompts: bool = False) -> GenerationOutput:
        """Generate for a batch of prompts. ``progress(step, active_rows)`` is called after each step.

        A prompt whose tokens plus ``max_new_tokens`` exceed a model's context
        (``config.max_position_embeddings``) is an error; with ``truncate_prompts=True`` such a
        prompt keeps only its last tokens (those that fit; ``prompt_lengths`` reports what was kept).
        """
        prompts, max_new_tokens, temperature, seed, stop, truncate_prompts = check_generate_args(
            prompts, max_new_tokens, temperature, seed, stop, truncate_prompts)
        prompt_ids = fit_context(self.encode(prompts, chat), max_new_tokens, self.context_length(),
                                 "max_position_embeddings", truncate_prompts)
        ids, mask = left_pad(prompt_ids, self.pad_id)
        batch = len(prompts)
        decoder = (_StaticDecoder(self, batch, ids.shape[1] + max_new_tokens) if self.cache == "static"
                   else _DynamicDecoder(self))
        # Both caches and every backend pick the same tokens: the draws follow the prompts, not the rows.
        draw = uniform_draws(seed, batch, self.step_device) if temperature > 0 else lambda rows: None

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


class _DynamicDecoder:
    """``DynamicCache`` per model; the attention mask grows by one column per step."""

    drops_finished_rows = True

    def __init__(self, gen: TaroGenerator):
        from transformers import DynamicCache

        self.gen = gen
        self.models = [(m, DynamicCache(config=m.config)) for m in (gen.base_model, gen.reward_model) if m is not None]

    def _run(self, ids, temperature, uniform, check_inputs):
        logits = [forward_last(m, c, ids, self.mask, self.positions) for m, c in self.models]
        return self.gen.mix(logits[0], logits[1] if len(logits) > 1 else None, temperature, uniform, check_inputs)

    def prefill(self, ids, mask, temperature, uniform):
        self.mask, self.positions = mask, positions_from_mask(mask)
        # Validate the logits' values once; later steps skip the (synchronising) value checks.
        return self._run(ids, temperature, uniform, check_inputs=True)

    def keep_rows(self, keep: list[int]):
        """Drop every batch row not in ``keep`` (finished prompts) from the caches, mask and positions."""
        for model, cache in self.models:
            cache.batch_select_indices(torch.tensor(keep, device=device_of(model, output=False)))
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
        dev = device_of(gen.base_model, output=False)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.positions = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.mask = torch.zeros(batch, max_len, dtype=torch.long, device=dev)
        self.uniform = torch.zeros(batch, dtype=torch.float32, device=gen.step_device)
        self.graph = None
        self.graph_out: Optional[StepResult] = None

    def _logits(self, ids, mask, positions):
        logits = [forward_last(m, c, ids, mask, positions) for m, c in self.models]
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


__all__ = ["TaroGenerator", "GenerationOutput", "check_tokenizers", "output_vocab_width", "MODES"]
