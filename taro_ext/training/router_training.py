"""Router training: the base and reward models are frozen; the router learns alpha_t.

For a correct solution ``target`` of ``prompt``, each target token y_t is scored under the
mixed score ``s = lp_b + alpha_t * lp_r`` (``alpha_t`` from the router on that position's two
logits rows), and the loss is averaged over target tokens. Per example, the loss is one of:

* ``nll``: ``-log softmax(s)[y_t]`` (temperature 1), the likelihood of the text;
* ``top1``: ``sigmoid(max_{j != y_t} s_j - s_t)``, a smoothed count of greedy misses: what greedy
  decoding needs. It is bounded: a confident miss costs 1, not its margin. The two differ where it
  matters most. On the SmolLM2 recipe's corrections (TARo's own wrong results, corrected; 1,231
  tokens) the right result is the argmax of the mix more often the larger alpha is (50% at alpha 0,
  59% at 1, 65% at 4), but the NLL is lowest near alpha 0.5 (1.31 nats; 2.95 at alpha 4), because
  where the reward model is wrong a large alpha is a confident mistake. A softplus hinge
  (``softplus(max_{j != y} s_j - s_y)``, tried first) has the same flaw, unbounded in the margin of
  a miss: lowest at alpha 0.5 too (1.12; 2.91 at alpha 4). The sigmoid falls with the miss rate,
  0.44 at alpha 0 to 0.35 at 4. ``top1_scale`` (tau, default 1) divides the margin,
  ``sigmoid(margin / tau)``: still bounded by 1 per token, but a miss by a wide margin keeps a
  gradient (at tau = 1 a miss by 5 nats has slope 0.007). Tried at tau = 4 on the SmolLM2 recipe
  (bench/results/experiment_b_router_attempts.md, round 5): it did not help there.
* ``alpha_target``: a regression of ``alpha_t / alpha_max`` (binary cross-entropy) onto, per token,
  the largest alpha of a grid (``ALPHA_GRID`` times ``alpha_max``) whose mix picks ``y_t`` greedily;
  a token no alpha of the grid picks gives no loss. Where every alpha is right (most tokens of a
  correct solution) its target is ``alpha_max``, so unlike ``top1``, which is flat there, it asks for
  the largest alpha that costs nothing, and it asks for less only where less is what gets the token
  right. On the SmolLM2 recipe (round 6 of bench/results/experiment_b_router_attempts.md) it tied
  GenARM 4 on the development set, where the ``top1`` routers were 4 problems behind, but its alpha on general
  text doubled (AlpacaEval NLL +3.6% against the base), so it is not the shipped router's loss.
* ``alpha_decisive``: ``alpha_target`` on the rows where alpha decides the greedy pick only (some
  alpha of the grid picks ``y_t`` and some does not). ``alpha_target``'s goal of ``alpha_max`` on the
  tokens every alpha gets right includes the words of a solution, which look like general text's;
  here those tokens are left to the other rows' losses. On the SmolLM2 recipe (round 7) it kept most of
  ``alpha_target``'s in-domain gain at a smaller cost on general text (AlpacaEval NLL +2.2%), still above
  the 2% bound, so it is not the shipped router's loss either.
* ``alpha_zero``: ``-log(1 - alpha_t / alpha_max)``, the base alone on every token, for text the reward
  model has nothing to add to. Unlike the NLL it has no tokens where a little alpha pays, so nothing for
  the router to fit on general text but alpha 0.

Only the router has gradients; the frozen models' logits rows at the target
positions are computed under ``no_grad`` once per batch, or once in all with a cache
(``cache="memory"`` or a directory), which makes every later epoch a router-only pass.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Optional, Sequence

import torch

from .. import reference
from ..atomic import write_file
from ..router import _RouterBase
from ..validate import as_float, as_int
from .batches import collate_completions, completion_logits, encode_completion
from .config import TrainConfig
from .distributed import DistributedContext, distributed_context
from .loop import TrainingTask, run_training

TOKEN_CLASSES = ("digit", "operator", "whitespace", "letter", "other")
_OPERATOR_CHARS = set("+-*/=×÷^()<>%")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _mixed(base_rows: torch.Tensor, reward_rows: torch.Tensor, alpha: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The mixed score ``s = lp_b + alpha * lp_r`` (spec steps 1 and 6)."""
    return reference.mixed_score(reference.log_softmax_rows(base_rows, vocab_size),
                                 reference.log_softmax_rows(reward_rows, vocab_size), alpha)


def _nll_of(s: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(s, dim=-1).gather(-1, targets[:, None])[:, 0]


def _top1_of(s: torch.Tensor, targets: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    target = s.gather(-1, targets[:, None])[:, 0]
    others = s.scatter(-1, targets[:, None], float("-inf")).max(dim=-1).values
    return torch.sigmoid((others - target) / scale)


def mixed_nll(base_rows: torch.Tensor, reward_rows: torch.Tensor, alpha: torch.Tensor, targets: torch.Tensor,
              vocab_size: int) -> torch.Tensor:
    """Per-row ``-log softmax(lp_b + alpha * lp_r)[target]`` (spec steps 1 and 6, temperature 1)."""
    return _nll_of(_mixed(base_rows, reward_rows, alpha, vocab_size), targets)


def mixed_top1_loss(base_rows: torch.Tensor, reward_rows: torch.Tensor, alpha: torch.Tensor, targets: torch.Tensor,
                    vocab_size: int, scale: float = 1.0) -> torch.Tensor:
    """Per-row ``sigmoid((max_{j != target} s_j - s_target) / scale)`` of the mixed score ``s`` (spec
    step 6): below 1/2 exactly when the target is the greedy pick."""
    return _top1_of(_mixed(base_rows, reward_rows, alpha, vocab_size), targets, scale)


# alpha_target's grid, as fractions of alpha_max.
ALPHA_GRID = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)

# Where a new router starts training: alpha = alpha_max * INIT_ALPHA_FRACTION (0.2 at alpha_max 4;
# ``TopKRouter.start_at_alpha``), not the constructor's alpha_max / 2. Started near alpha_max / 2, the
# rows where the reward model is wrong (general text; Experiment A's stories) push u down until
# sigmoid(u) saturates, and Adam's second moments, filled by those first large gradients, leave the
# later small ones no step: the router stays at alpha = 0 everywhere. Measured: 3 of 4 runs of the
# SmolLM2 recipe's round 2 (README), and 4 of 8 random inits of Experiment A's seed-1 router (its
# training NLL 0.208 against 0.162 for a constant alpha of 0.25); started at 0.2, 0 of 8, with an NLL on
# unseen pool rows as low as or lower than the default's best runs, on seeds 0 and 1.
INIT_ALPHA_FRACTION = 0.05


def mixed_alpha_target_loss(base_rows: torch.Tensor, reward_rows: torch.Tensor, alpha: torch.Tensor,
                            targets: torch.Tensor, vocab_size: int, alpha_max: float = 1.0,
                            decisive_only: bool = False) -> torch.Tensor:
    """Per-row binary cross-entropy of ``alpha / alpha_max`` against the largest fraction ``f`` of
    ``ALPHA_GRID`` for which ``argmax(lp_b + f * alpha_max * lp_r)`` is the target; 0 (and no
    gradient) for a row that no alpha of the grid gets right, and with ``decisive_only`` also for a
    row that every alpha of the grid gets right (where alpha does not change the greedy pick)."""
    with torch.no_grad():
        lp_b = reference.log_softmax_rows(base_rows, vocab_size)
        lp_r = reference.log_softmax_rows(reward_rows, vocab_size)
        goal = torch.full(alpha.shape, float("nan"), device=alpha.device)
        every = torch.ones(alpha.shape, dtype=torch.bool, device=alpha.device)
        for f in ALPHA_GRID:  # ascending, so the largest alpha that picks the target wins
            picked = reference.mixed_score(lp_b, lp_r, torch.full_like(goal, f * alpha_max)).argmax(dim=-1)
            goal = torch.where(picked.eq(targets), f, goal)
            every &= picked.eq(targets)
        known = ~goal.isnan() & ~(every & decisive_only)
    share = (alpha.float() / alpha_max).clamp(1e-6, 1.0 - 1e-6)
    bce = torch.nn.functional.binary_cross_entropy(share, goal.nan_to_num(0.0), reduction="none")
    return torch.where(known, bce, torch.zeros_like(bce))


def mixed_alpha_zero_loss(base_rows: torch.Tensor, reward_rows: torch.Tensor, alpha: torch.Tensor,
                          targets: torch.Tensor, vocab_size: int, alpha_max: float = 1.0) -> torch.Tensor:
    """Per-row binary cross-entropy of ``alpha / alpha_max`` against 0, ``-log(1 - alpha / alpha_max)``:
    the base alone, whatever the two models' rows say (for text the reward model knows nothing of)."""
    share = (alpha.float() / alpha_max).clamp(max=1.0 - 1e-6)
    return -torch.log1p(-share)


LOSSES = {"nll": mixed_nll, "top1": mixed_top1_loss, "alpha_target": mixed_alpha_target_loss,
          "alpha_decisive": functools.partial(mixed_alpha_target_loss, decisive_only=True),
          "alpha_zero": mixed_alpha_zero_loss}


def token_class(text: str) -> str:
    """``digit``, ``operator``, ``whitespace``, ``letter`` or ``other`` for a token's text
    (surrounding whitespace ignored unless the token is only whitespace)."""
    core = text.strip()
    if not core:
        return "whitespace"
    if all(c.isdigit() or c == "." for c in core) and any(c.isdigit() for c in core):
        return "digit"
    if all(c in _OPERATOR_CHARS for c in core):
        return "operator"
    if core.isalpha():
        return "letter"
    return "other"


def alpha_statistics(alpha: torch.Tensor, classes: Sequence[str]) -> dict:
    """``{"all": stats, <class>: stats, ...}`` with count, mean, std and quantiles q05..q95 of
    alpha; ``classes[i]`` is the token class of the token ``alpha[i]`` was used for."""
    alpha = alpha.detach().double().cpu()
    if len(classes) != alpha.numel():
        raise ValueError(f"classes has {len(classes)} entries for {alpha.numel()} alpha values")
    groups = {"all": alpha}
    for name in TOKEN_CLASSES:
        mask = torch.tensor([c == name for c in classes], dtype=torch.bool)
        if mask.any():
            groups[name] = alpha[mask]
    out = {}
    for name, a in groups.items():
        q = torch.quantile(a, torch.tensor(QUANTILES, dtype=torch.float64))
        out[name] = {"count": a.numel(), "mean": a.mean().item(),
                     "std": a.std(unbiased=False).item(),
                     **{f"q{int(round(p * 100)):02d}": v for p, v in zip(QUANTILES, q.tolist())}}
    return out


def format_alpha_table(stats: dict) -> str:
    cols = ["count", "mean", "std"] + [f"q{int(round(p * 100)):02d}" for p in QUANTILES]
    lines = [f"{'tokens':<11}" + "".join(f"{c:>8}" for c in cols)]
    for name, s in stats.items():
        lines.append(f"{name:<11}" + f"{s['count']:>8d}" + "".join(f"{s[c]:>8.3f}" for c in cols[1:]))
    return "\n".join(lines)


class FrozenLogits:
    """Logits rows of the frozen models at each example's target positions.

    ``cache=None`` computes them for every batch; ``"memory"`` keeps them (in
    ``cache_dtype``) on the CPU after the first time; a directory keeps them on disk, one file
    per example, named by a hash of the example's tokens and of the two models' weights: a
    later run with more (or other) examples reuses the files of the examples it shares, and
    other models never read these.
    """

    def __init__(self, base_model, reward_model, encoded, pad_id: int, device: torch.device,
                 cache: Optional[str], cache_dtype: torch.dtype):
        self.base, self.reward = base_model, reward_model
        self.encoded, self.pad_id, self.device = encoded, pad_id, device
        self.cache, self.cache_dtype = cache, cache_dtype
        self.memory: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if cache not in (None, "memory"):
            os.makedirs(cache, exist_ok=True)
            models = json.dumps([_fingerprint(m) for m in (base_model, reward_model)] + [str(cache_dtype)])
            self.keys = [hashlib.sha256(json.dumps([models, ctx, comp]).encode()).hexdigest()[:32]
                         for ctx, comp in encoded]

    @torch.no_grad()
    def compute(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = collate_completions([self.encoded[i] for i in indices], self.pad_id, self.device)
        out = []
        for model in (self.base, self.reward):
            logits = completion_logits(model, batch)
            out.append([logits[j][batch.target_mask[j]] for j in range(len(indices))])
        return list(zip(*out))

    def _path(self, i: int) -> str:
        return os.path.join(self.cache, f"{self.keys[i]}.pt")

    def _load(self, i: int):
        if self.cache == "memory":
            return self.memory.get(i)
        if not os.path.isfile(self._path(i)):
            return None
        try:  # weights_only: a cache file is tensors, and loading it must run no code
            rows = torch.load(self._path(i), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError ...: one message)
            raise ValueError(f"{self._path(i)} is not a readable logits cache file ({type(e).__name__}); "
                             f"delete the cache directory {self.cache}") from None
        targets = self.encoded[i][1]
        if not (isinstance(rows, tuple) and len(rows) == 2 and all(torch.is_tensor(r) and r.dim() == 2
                                                                  and r.shape[0] == len(targets) for r in rows)):
            raise ValueError(f"{self._path(i)} does not hold this example's logits rows; delete the cache "
                             f"directory {self.cache}")
        return rows

    def _store(self, i: int, rows) -> None:
        rows = tuple(r.to("cpu", self.cache_dtype) for r in rows)
        if self.cache == "memory":
            self.memory[i] = rows
        else:
            write_file(self._path(i), lambda tmp: torch.save(rows, tmp))  # another process may read it later

    def rows(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(base_rows [N, Vb], reward_rows [N, Vr], targets [N])`` over the examples' target tokens."""
        if self.cache is None:
            per_example = self.compute(indices)
        else:
            found = {i: self._load(i) for i in indices}
            missing = [i for i, r in found.items() if r is None]
            if missing:
                for i, rows in zip(missing, self.compute(missing)):
                    self._store(i, rows)
                    found[i] = rows
            per_example = [found[i] for i in indices]
        targets = torch.tensor([t for i in indices for t in self.encoded[i][1]], device=self.device)
        base = torch.cat([b.to(self.device) for b, _ in per_example])
        reward = torch.cat([r.to(self.device) for _, r in per_example])
        return base, reward, targets


@torch.no_grad()
def _fingerprint(model) -> list:
    """What identifies a model's weights for the logits cache: its class, parameter count and
    the sum and sum of squares of all its parameters (fp64)."""
    params = list(model.parameters())
    return [type(model).__name__, sum(p.numel() for p in params),
            float(sum(p.double().sum() for p in params)), float(sum(p.double().square().sum() for p in params))]


class RouterTrainer:
    """Trains ``router`` (``TopKRouter`` or ``FullLogitsRouter``) on ``(prompt, target)`` text
    pairs, or ``(prompt, target, loss)`` with ``loss`` a key of ``LOSSES`` (default ``nll``); the
    loss covers target tokens only (prompt and target are tokenised separately, as a decoder
    appends target tokens after the prompt's). ``weights`` (one per example, default 1) scale each
    example's tokens in the loss: the recipe's few correction rows are otherwise about 1% of them.
    ``top1_scale`` is the ``top1`` loss's margin scale tau (module docstring). The router trains from
    the weights it has: start a new one small, ``router.start_at_alpha(router.alpha_max *
    INIT_ALPHA_FRACTION)``, as ``taro-ext train-router`` and Experiment A do (why: ``INIT_ALPHA_FRACTION``)."""

    def __init__(self, base_model, reward_model, tokenizer, router, examples: Sequence[tuple[str, str]], *,
                 config: Optional[TrainConfig] = None, max_length: int = 1024, cache: Optional[str] = None,
                 cache_dtype: torch.dtype = torch.float32, weights: Optional[Sequence[float]] = None,
                 top1_scale: float = 1.0):
        max_length = as_int("max_length", max_length, minimum=2)
        scale = as_float("top1_scale", top1_scale, above=0.0)
        if not isinstance(router, _RouterBase):
            raise TypeError(f"router must be a TopKRouter or FullLogitsRouter, got {type(router).__name__}")
        self.loss_fns = dict(LOSSES, top1=functools.partial(mixed_top1_loss, scale=scale),
                             **{name: functools.partial(LOSSES[name], alpha_max=router.alpha_max)
                                for name in ("alpha_target", "alpha_decisive", "alpha_zero")})
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise TypeError(f"cache must be None, 'memory' or a directory, got {cache!r}")
        if cache not in (None, "memory") and os.path.exists(cache) and not os.path.isdir(cache):
            raise ValueError(f"cache={os.fspath(cache)!r} is a file, not a directory")
        if not (isinstance(cache_dtype, torch.dtype) and cache_dtype.is_floating_point):
            raise TypeError(f"cache_dtype must be a floating torch.dtype, got {cache_dtype!r}")
        if len(tokenizer) > router.vocab_size:
            raise ValueError(f"the router's vocab_size={router.vocab_size} is smaller than the tokenizer's "
                             f"{len(tokenizer)} tokens")
        self.config = config or TrainConfig()
        self.ctx: DistributedContext = distributed_context(self.config.device)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.base = base_model.eval().requires_grad_(False).to(self.ctx.device)
        self.reward = reward_model.eval().requires_grad_(False).to(self.ctx.device)
        self.router = router.to(self.ctx.device)
        self.vocab_size = router.vocab_size
        self.encoded = self.encode(examples)
        self.losses = [ex[2] if len(ex) == 3 else "nll" for ex in examples]
        self.weights = self._check_weights(weights, len(examples))
        self.frozen = FrozenLogits(self.base, self.reward, self.encoded, self.pad_id, self.ctx.device,
                                   None if cache is None else os.fspath(cache), cache_dtype)

    def encode(self, examples):
        for n, ex in enumerate(examples):
            if not (isinstance(ex, (tuple, list)) and len(ex) in (2, 3) and all(isinstance(x, str) for x in ex)):
                raise TypeError(f"examples[{n}] must be a (prompt, target) pair of strings, or (prompt, target, "
                                f"loss), got {ex!r:.60}")
            if len(ex) == 3 and ex[2] not in LOSSES:
                raise ValueError(f"examples[{n}]: loss must be one of {sorted(LOSSES)}, got {ex[2]!r}")
        return [encode_completion(self.tokenizer, ex[0], ex[1], self.max_length) for ex in examples]

    @staticmethod
    def _check_weights(weights, n: int) -> list[float]:
        if weights is None:
            return [1.0] * n
        weights = list(weights)
        if len(weights) != n:
            raise ValueError(f"weights: one per example, got {len(weights)} for {n} examples")
        return [as_float(f"weights[{i}]", w, above=0.0) for i, w in enumerate(weights)]

    def _loss(self, router, indices):
        base_rows, reward_rows, targets = self.frozen.rows(indices)
        alpha = router(base_rows, reward_rows, self.vocab_size)
        kinds = [self.losses[i] for i in indices for _ in self.encoded[i][1]]
        weights = torch.tensor([self.weights[i] for i in indices for _ in self.encoded[i][1]], device=alpha.device)
        loss = alpha.new_zeros(())
        for name, fn in self.loss_fns.items():
            rows = torch.tensor([k == name for k in kinds], device=alpha.device)
            if rows.any():
                per_token = fn(base_rows[rows], reward_rows[rows], alpha[rows], targets[rows], self.vocab_size)
                loss = loss + (weights[rows] * per_token).sum()
        return loss, {"alpha": (weights * alpha).sum().item()}

    def train(self) -> list[dict]:
        lr_scales = {}
        if self.router.design == "full":
            # The full design's input is 2V log-probs of about -20 each. Under the default init W1 x
            # spreads by about 20, so sigmoid(u) saturates at once; and an Adam step moves each
            # pre-activation by about lr * ||x||, thousands of times lr at V = 49152, so the router
            # jumps to alpha = 0 and stays there (what the SmolLM2 recipe's first full router did).
            # So: pre-activations standardised on a first batch of training positions, and w1's
            # learning rate divided by the inputs' mean L2 norm (a step then moves them by about
            # lr, as it moves b1). The top-K design's input is small and unit-scale: neither is needed.
            first = range(min(len(self.encoded), self.config.micro_batch_size))
            base_rows, reward_rows, _ = self.frozen.rows(first)
            x = self.router.input_features(base_rows.float(), reward_rows.float(), self.vocab_size)
            self.router.standardise_first_layer(x)
            lr_scales["w1"] = 1.0 / x.float().norm(dim=1).mean().item()
        task = TrainingTask(self.router, len(self.encoded), lambda i: self.weights[i] * len(self.encoded[i][1]), self._loss,
                            description="router", metric_names=("alpha",), lr_scales=lr_scales)
        return run_training(task, self.config, self.ctx)

    @torch.no_grad()
    def evaluate(self, examples: Sequence[tuple[str, str]], fixed_alphas: Sequence[float] = (),
                 batch_size: Optional[int] = None) -> dict:
        """Per-token NLL on ``examples`` under the router (``nll``) and under each fixed alpha
        (``nll_fixed``: {alpha: nll}, GenARM's decoding distribution), the fraction of target
        tokens that are the mix's greedy pick (``top1``, ``top1_fixed``), and the router's
        per-token ``alpha`` statistics (``alpha_statistics``, by the target token's class)."""
        batch_size = batch_size or self.config.micro_batch_size
        encoded = self.encode(examples)
        frozen = FrozenLogits(self.base, self.reward, encoded, self.pad_id, self.ctx.device, None, torch.float32)
        self.router.eval()
        totals = {a: [0.0, 0] for a in ["router"] + [float(a) for a in fixed_alphas]}  # [nll, greedy hits]
        alphas, classes = [], []
        for s in range(0, len(encoded), batch_size):
            base_rows, reward_rows, targets = frozen.rows(range(s, min(s + batch_size, len(encoded))))
            alpha = self.router(base_rows, reward_rows, self.vocab_size)
            lp_b = reference.log_softmax_rows(base_rows, self.vocab_size)  # once for every alpha below
            lp_r = reference.log_softmax_rows(reward_rows, self.vocab_size)
            for a, total in totals.items():
                mix = reference.mixed_score(lp_b, lp_r, alpha if a == "router" else torch.full_like(alpha, a))
                total[0] += _nll_of(mix, targets).sum().item()
                total[1] += int(mix.argmax(dim=-1).eq(targets).sum())
            alphas.append(alpha.float().cpu())
            classes += [token_class(self.tokenizer.decode([t])) for t in targets.tolist()]
        n_tokens = len(classes)
        router_nll, router_hits = totals.pop("router")
        return {"nll": router_nll / n_tokens, "nll_fixed": {a: v[0] / n_tokens for a, v in totals.items()},
                "top1": router_hits / n_tokens, "top1_fixed": {a: v[1] / n_tokens for a, v in totals.items()},
                "tokens": n_tokens, "alpha": alpha_statistics(torch.cat(alphas), classes)}

    def save(self, output_dir: str) -> None:
        """``router.save_pretrained(output_dir)`` (rank 0 writes)."""
        if self.ctx.is_main:
            self.router.save_pretrained(output_dir)
