"""TARo inside llama.cpp: ``LlamaCppTaroGenerator`` decodes GGUF models through ``llama-cpp-python``.

llama.cpp runs the two models (its quantised CPU kernels, its own KV caches); our fused step picks
every token. The decode loop:

1. Both GGUF files are loaded as ``llama_cpp.Llama`` models (weights memory-mapped once). For each
   ``generate`` call each model gets a llama.cpp context with one sequence per prompt
   (``n_seq_max = B``, a separate KV stream per sequence, ``kv_unified = False``), so a batch of
   prompts is one ``llama_decode`` per model per step, with no padding: sequence ``b`` holds
   prompt ``b`` at positions ``0 .. len - 1``, as the left-padded ``TaroGenerator`` sees it.
2. After each ``llama_decode`` the logits of the batch's output rows are contiguous in the
   context's buffer; they are viewed as a ``[B, V]`` torch tensor without a copy
   (``numpy.ctypeslib.as_array`` over the pointer, then ``torch.from_numpy``) and passed to
   ``taro_step`` (backend ``cpu``, the fused C++ kernel) with the router, or with
   ``alpha_override`` for GenARM (fixed alpha) and base (0; the reward model is not run).
3. The picked tokens are fed to both contexts as the next batch. A finished row (EOS / end of
   generation token, or a stop string in its decoded text) is removed from both KV caches and
   from the batch.
4. Sampling uses the same caller-seeded uniforms as ``TaroGenerator`` (``generation.uniform_draws``, on
   the CPU: one stream for an int ``seed``, one per prompt for a list), so both engines pick the same
   token from the same distribution.

Tokenisation, the chat template and detokenisation use the GGUF's own tokenizer (llama.cpp's).
``timings`` holds the seconds spent in llama.cpp's forwards and in the step during the last call.
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .generation import (GenerationOutput, check_generate_args, check_mode_args, check_vocab_size, cut_at_stop,
                         fit_context, uniform_draws)
from .router import _RouterBase
from .step import StepResult, taro_step
from .validate import as_int

def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as err:
        raise ImportError("the llama.cpp engine needs llama-cpp-python: `pip install -e .[llamacpp]` "
                          "(the version pinned in requirements-llamacpp.txt, compiled from source)") from err
    return llama_cpp


def load_gguf(path: str | os.PathLike, *, n_threads: int = 1, n_ctx: int = 512):
    """A ``llama_cpp.Llama`` for the GGUF file at ``path`` (quiet, CPU).

    Its own context (``n_ctx`` tokens) serves llama.cpp's own samplers, e.g. ``Llama.generate``
    for the greedy reference; ``LlamaCppTaroGenerator`` decodes in contexts of its own.
    """
    llama_cpp = _llama_cpp()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} not found")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                           logits_all=False, verbose=False)


def _vocab_texts(llama_cpp, vocab) -> list[bytes]:
    return [llama_cpp.llama_vocab_get_text(vocab, i) for i in range(llama_cpp.llama_vocab_n_tokens(vocab))]


def _free_context(llama_cpp, handle: list) -> None:
    """Frees the context in ``handle`` (a one-item list shared with the model's exit stack), once."""
    if handle[0]:
        llama_cpp.llama_free(handle[0])
        handle[0] = None


class _Context:
    """One llama.cpp context of a model (``llama``, a ``llama_cpp.Llama``): ``n_seq`` sequences of up to
    ``n_ctx_seq`` tokens each.

    A context must be freed before its model (``llama_free`` reads the model). Python frees objects
    in no such order (a dropped generator's attributes, cycles collected by the garbage collector,
    interpreter exit), so the free is also registered on the model's own exit stack, as
    llama-cpp-python does for its contexts: whoever goes first, the model's free runs after the
    context's. The stack keeps only the one-item ``handle``, not this object, so a context nobody
    uses is freed as soon as it is dropped.
    """

    def __init__(self, llama_cpp, llama, n_seq: int, n_ctx_seq: int, n_batch: int, n_threads: int):
        self._handle = [None]  # before anything can fail: __del__ closes it
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_seq * n_ctx_seq
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False  # one KV stream per sequence: attention never scans other prompts' cells
        # As llama_cpp.Llama's default: its own samplers and this engine then run the same kernels.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self.api, self.n_seq, self.n_ctx_seq, self.n_batch = llama_cpp, n_seq, n_ctx_seq, n_batch
        model = llama.model
        if model is None:
            raise RuntimeError("the llama.cpp model is closed")
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context ({n_seq} sequences x {n_ctx_seq} tokens)")
        self._handle = [ctx]
        # llama_cpp.Llama._model is the internal LlamaModel whose exit stack frees the model (0.3.x).
        llama._model._exit_stack.callback(_free_context, llama_cpp, self._handle)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    @property
    def ctx(self):
        if not self._handle[0]:
            raise RuntimeError("this llama.cpp context is closed (its model was closed)")
        return self._handle[0]

    def fits(self, n_seq: int, n_ctx_seq: int, n_batch: int) -> bool:
        return n_seq == self.n_seq and n_ctx_seq <= self.n_ctx_seq and n_batch <= self.n_batch

    def clear(self):
        self.api.llama_memory_clear(self.api.llama_get_memory(self.ctx), True)

    def drop_sequence(self, seq: int):
        self.api.llama_memory_seq_rm(self.api.llama_get_memory(self.ctx), seq, -1, -1)

    def decode(self, batch, n_outputs: int) -> torch.Tensor:
        """Runs ``batch``; returns its ``n_outputs`` logits rows, ``[n_outputs, V]``, a view of llama.cpp's buffer."""
        code = self.api.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} ({batch.n_tokens} tokens)")
        pointer = self.api.llama_get_logits(self.ctx)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(n_outputs, self.n_vocab)))

    def close(self):
        _free_context(self.api, self._handle)

    def __del__(self):
        self.close()


class _Batch:
    """A ``llama_batch`` of up to ``capacity`` tokens, one sequence id each; filled from Python lists."""

    def __init__(self, llama_cpp, capacity: int):
        self.api, self.capacity = llama_cpp, capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        b = self.batch
        self.token = np.ctypeslib.as_array(b.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(b.n_seq_id, shape=(capacity,))
        self.output = np.ctypeslib.as_array(ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)), shape=(capacity,))
        self.n_seq_id[:] = 1

    def fill(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int], outputs: Sequence[int]):
        n = len(tokens)
        self.token[:n] = tokens
        self.pos[:n] = positions
        self.output[:n] = outputs
        seq_id = self.batch.seq_id
        for i, s in enumerate(seqs):
            seq_id[i][0] = s
        self.batch.n_tokens = n

    def close(self):
        if self.batch is not None:
            self.api.llama_batch_free(self.batch)
            self.batch = None

    def __del__(self):
        self.close()


class LlamaCppTaroGenerator:
    """Batched TARo / GenARM / base decoding of GGUF models in llama.cpp, our fused step picking the tokens.

    ``base`` and ``reward`` are GGUF paths (or ``llama_cpp.Llama`` objects from ``load_gguf``);
    they must share one vocabulary (the reward GGUF written by ``taro_ext.gguf_export`` copies the
    base's tokenizer). ``reward`` may be None in mode ``base``. ``n_threads`` is llama.cpp's thread
    count per model. The step runs on ``backend`` (``cpu``: the fused C++ kernel; ``torch``: the
    reference). ``generate`` has ``TaroGenerator.generate``'s signature and output.

    ``close()`` (or leaving a ``with`` block) frees the llama.cpp contexts, then the models this
    generator loaded from paths; models passed in as ``Llama`` objects stay with their owner.
    """

    def __init__(self, base, reward, router: Optional[_RouterBase], *, mode: str = "taro", alpha: float = 1.0,
                 n_threads: int = 1, backend: str = "cpu", vocab_size: Optional[int] = None):
        alpha = check_mode_args(mode, alpha, router, reward, backend)
        if backend not in ("cpu", "torch"):
            raise ValueError(f"backend must be 'cpu' or 'torch' (the logits are on the CPU), got {backend!r}")
        n_threads = as_int("n_threads", n_threads, minimum=1)
        self.api = _llama_cpp()
        self.n_threads = n_threads
        self._contexts: list[_Context] = []
        self._loaded: list = []  # the Llama models loaded here from paths: close() frees them
        self.base = self.reward = None
        try:
            self._open(base, reward, mode)
        except BaseException:
            self.close()
            raise
        texts = _vocab_texts(self.api, self.vocab)
        if self.reward is not None and self.reward is not self.base:
            reward_texts = _vocab_texts(self.api, self.api.llama_model_get_vocab(self.reward.model))
            if reward_texts != texts:
                differ = [i for i, (a, b) in enumerate(zip(texts, reward_texts)) if a != b]
                self.close()
                raise ValueError(f"the base and reward GGUF vocabularies differ (sizes {len(texts)} vs "
                                 f"{len(reward_texts)}, {len(differ)} ids with different tokens, e.g. {differ[:3]}): "
                                 f"a reward model guides a base model only through a shared tokenizer")
        shared_vocab = len(texts)
        self.vocab_size = check_vocab_size(vocab_size, shared_vocab, mode, router, "the GGUF vocabulary's")
        self.mode, self.backend = mode, backend
        self.alpha = alpha
        self.router = router.to("cpu") if mode == "taro" else None
        self.eos_ids = sorted(i for i in range(shared_vocab) if self.api.llama_vocab_is_eog(self.vocab, i))
        self.timings = {"forward_s": 0.0, "step_s": 0.0, "steps": 0}

    def _model(self, model):
        if isinstance(model, self.api.Llama):
            return model
        llama = load_gguf(model, n_threads=self.n_threads)
        self._loaded.append(llama)
        return llama

    def _open(self, base, reward, mode: str):
        self.base = self._model(base)
        if mode == "base":
            self.reward = None
        elif reward is base or (not isinstance(reward, self.api.Llama) and not isinstance(base, self.api.Llama)
                                and Path(reward).resolve() == Path(base).resolve()):
            self.reward = self.base
        else:
            self.reward = self._model(reward)
        self.vocab = self.api.llama_model_get_vocab(self.base.model)

    # --- the one call into the step ------------------------------------------------------------
    def mix(self, base_logits: torch.Tensor, reward_logits: Optional[torch.Tensor], temperature: float,
            uniform: Optional[torch.Tensor], check_inputs: bool) -> StepResult:
        """One ``taro_step`` on the two models' logits rows (``reward_logits`` None in mode base)."""
        if reward_logits is None:
            reward_logits = base_logits  # mode base: alpha == 0, the reward term is exactly 0 (spec)
        override = None if self.mode == "taro" else self.alpha
        return taro_step(base_logits, reward_logits, self.router, temperature=temperature, uniform=uniform,
                         vocab_size=self.vocab_size, alpha_override=override, check_inputs=check_inputs,
                         backend=self.backend)

    # --- prompts ---------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
        """Token ids of each prompt with the GGUF's tokenizer; with ``chat`` the user turn of its chat template.

        As ``TaroGenerator.encode``: special-token texts in the prompt are parsed as special tokens,
        a plain prompt gets the BOS token when the vocabulary asks for one, a chat prompt none.
        """
        self._check_open()
        if chat:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self.base.metadata.get("tokenizer.chat_template")
            if not template:
                raise ValueError("chat=True but the base GGUF has no tokenizer.chat_template")

            def piece(token):
                return self.api.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace") if token >= 0 else ""

            render = Jinja2ChatFormatter(template, eos_token=piece(self.api.llama_vocab_eos(self.vocab)),
                                         bos_token=piece(self.api.llama_vocab_bos(self.vocab)))
            texts = [render(messages=[{"role": "user", "content": p}]).prompt for p in prompts]
            return [self.base.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
        return [self.base.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]

    def context_length(self) -> int:
        """The most positions the models take (the smaller GGUF ``n_ctx_train``)."""
        return min(self.api.llama_model_n_ctx_train(m.model) for m in self._models())

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``token_ids`` (as a transformers tokenizer's ``decode``, e.g. for ``explain.write_html``)."""
        self._check_open()
        return self.base.detokenize(list(token_ids), special=not skip_special_tokens).decode("utf-8", "replace")

    # --- contexts --------------------------------------------------------------------------------
    def _models(self):
        return [self.base] + ([self.reward] if self.reward is not None else [])

    def _get_contexts(self, n_seq: int, n_ctx_seq: int, n_batch: int) -> list[_Context]:
        """A context per model for this call: reused (cleared) when big enough, else created."""
        if not (len(self._contexts) == len(self._models())
                and all(c.fits(n_seq, n_ctx_seq, n_batch) for c in self._contexts)):
            for c in self._contexts:
                c.close()
            n_ctx_seq = -(-n_ctx_seq // 256) * 256  # room for a few later calls of similar size
            self._contexts = [_Context(self.api, m, n_seq, n_ctx_seq, n_batch, self.n_threads)
                              for m in self._models()]
        for c in self._contexts:
            c.clear()
        return self._contexts

    def close(self):
        """Frees the llama.cpp contexts, then the models loaded from paths; the generator is unusable after."""
        for c in self._contexts:
            c.close()
        self._contexts = []
        for llama in self._loaded:
            llama.close()
        self._loaded = []
        self.base = self.reward = None

    def _check_open(self):
        if self.base is None:
            raise RuntimeError("this LlamaCppTaroGenerator is closed")
        if any(m.model is None for m in self._models()):
            raise RuntimeError("a llama.cpp model of this LlamaCppTaroGenerator was closed by its owner")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def llama_greedy(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """llama.cpp's own greedy decoding of the base model (``Llama.generate``: temperature 0, no
        penalties) from ``prompt_ids``, up to ``max_new_tokens`` or an end-of-generation token: what
        mode ``base`` must reproduce token for token."""
        self._check_open()
        out = []
        eos = set(self.eos_ids)
        self.base.reset()  # no reuse of an earlier prompt's KV cells (a prefix hit decodes in other splits)
        for token in self.base.generate(list(prompt_ids), temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if token in eos or len(out) == max_new_tokens:
                break
        return out

    # --- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, temperature: float = 0.0,
                 seed: int | Sequence[int] = 0, stop: Optional[Sequence[str]] = None, chat: bool = False,
                 progress: Optional[Callable[[int, int], None]] = None,
                 truncate_prompts: bool = False) -> GenerationOutput:
        """Generate for a batch of prompts. ``progress(step, active_rows)`` is called after each step.

        A prompt whose tokens plus ``max_new_tokens`` exceed a model's training context
        (``n_ctx_train``) is an error; with ``truncate_prompts=True`` it keeps only its last tokens.
        """
        self._check_open()
        prompts, max_new_tokens, temperature, seed, stop, truncate_prompts = check_generate_args(
            prompts, max_new_tokens, temperature, seed, stop, truncate_prompts)
        prompt_ids = fit_context(self.encode(prompts, chat), max_new_tokens, self.context_length(),
                                 "the GGUF's n_ctx_train", truncate_prompts)
        batch = len(prompts)
        most = self.api.llama_max_parallel_sequences()
        if batch > most:
            raise ValueError(f"{batch} prompts: the llama.cpp engine decodes at most {most} at once (llama.cpp's "
                             f"sequences per context); split the batch")
        n_ctx_seq = max(len(p) for p in prompt_ids) + max_new_tokens
        n_prompt_tokens = sum(len(p) for p in prompt_ids)
        contexts = self._get_contexts(batch, n_ctx_seq, max(n_prompt_tokens, batch))
        llama_batch = _Batch(self.api, max(n_prompt_tokens, batch))
        draw = uniform_draws(seed, batch, "cpu") if temperature > 0 else lambda rows: None
        timings = {"forward_s": 0.0, "step_s": 0.0, "steps": 0}

        def run(n_outputs, uniform, check_inputs):
            t0 = time.perf_counter()
            logits = [c.decode(llama_batch.batch, n_outputs) for c in contexts]
            t1 = time.perf_counter()
            step = self.mix(logits[0], logits[1] if len(logits) > 1 else None, temperature, uniform, check_inputs)
            t2 = time.perf_counter()
            timings["forward_s"] += t1 - t0
            timings["step_s"] += t2 - t1
            timings["steps"] += 1
            return step

        out_ids = [[] for _ in range(batch)]
        out_alpha = [[] for _ in range(batch)]
        texts: list[Optional[str]] = [None] * batch
        finished = [False] * batch
        eos = set(self.eos_ids)
        positions = [len(p) for p in prompt_ids]  # the next position of each sequence
        rows = list(range(batch))  # the prompt (= llama.cpp sequence id) behind each output row
        try:
            llama_batch.fill([t for p in prompt_ids for t in p], [i for p in prompt_ids for i in range(len(p))],
                             [row for row, p in enumerate(prompt_ids) for _ in p],
                             [int(i == len(p) - 1) for p in prompt_ids for i in range(len(p))])
            step = run(batch, draw(rows), check_inputs=True)
            for n in range(max_new_tokens):
                tokens, alphas = step.tokens.tolist(), step.alpha.tolist()
                for row, token, alpha in zip(rows, tokens, alphas):
                    out_ids[row].append(token)
                    out_alpha[row].append(alpha)
                    if token in eos:
                        finished[row] = True
                    elif stop:
                        cut = cut_at_stop(self.decode(out_ids[row]), stop)
                        if cut is not None:
                            texts[row], finished[row] = cut, True
                if progress is not None:
                    progress(n + 1, batch - sum(finished))
                if all(finished) or n + 1 == max_new_tokens:
                    break
                for row in rows:
                    if finished[row]:
                        for c in contexts:
                            c.drop_sequence(row)
                keep = [i for i, row in enumerate(rows) if not finished[row]]
                rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]
                llama_batch.fill(tokens, [positions[row] for row in rows], rows, [1] * len(rows))
                for row in rows:
                    positions[row] += 1
                step = run(len(rows), draw(rows), check_inputs=False)
        finally:
            llama_batch.close()
            self.timings = timings
        texts = [t if t is not None else self.decode(ids) for t, ids in zip(texts, out_ids)]
        return GenerationOutput(texts, out_ids, out_alpha, [len(p) for p in prompt_ids])


__all__ = ["LlamaCppTaroGenerator", "load_gguf"]
