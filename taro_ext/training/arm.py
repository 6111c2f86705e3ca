"""GenARM's autoregressive reward model (ARM): a causal LM trained on step-wise preferences.

For a pair (context = prompt + initial steps, chosen step, rejected step) the loss is
``-log sigmoid(beta * (sum log pi_r(chosen | context) - sum log pi_r(rejected | context)))``:
no reference model; the reward of a step is its summed token log-probability, so the
trained LM's token log-probs are the token-level reward TARo mixes in at decode time.

GenARM initialises the ARM from an SFT model: ``ArmTrainer.warm_start`` fine-tunes the same
(LoRA) model on correct solutions first. The pair loss alone can grow a margin by pushing
both steps' likelihoods down (summed log-probs also favour the shorter step); ``nll_weight``
adds the per-token NLL of the chosen step, which keeps the chosen text likely (as RPO does
for DPO).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..atomic import replace_directory
from ..data import StepPair, render_prompt
from ..models import ADAPTER_CONFIG
from ..router import TRAINING_RUN_ENTRIES
from ..validate import as_bool, as_float, as_int
from .batches import CompletionBatch, collate_completions, completion_logits, encode_completion, token_logprobs
from .config import TrainConfig
from .distributed import DistributedContext, distributed_context
from .loop import TrainingTask, run_training

REDUCTIONS = ("mean", "sum", "none")


def arm_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float,
             reduction: str = "mean") -> torch.Tensor:
    """``-log sigmoid(beta * (chosen_logps - rejected_logps))`` per pair (summed token log-probs in)."""
    if not torch.is_tensor(chosen_logps) or not torch.is_tensor(rejected_logps):
        raise TypeError("chosen_logps and rejected_logps must be tensors")
    if chosen_logps.shape != rejected_logps.shape:
        raise ValueError(f"chosen_logps {tuple(chosen_logps.shape)} and rejected_logps "
                         f"{tuple(rejected_logps.shape)} must have the same shape")
    beta = as_float("beta", beta, above=0.0)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    losses = -F.logsigmoid(beta * (chosen_logps - rejected_logps))
    return losses if reduction == "none" else getattr(losses, reduction)()


def pair_context(pair: StepPair, tokenizer, chat: bool) -> str:
    """The text the chosen/rejected step continues: the rendered prompt and the initial steps."""
    return render_prompt(pair.prompt, tokenizer, chat) + pair.initial_reason_steps


@dataclass
class LoraSettings:
    """LoRA adapters on the attention and MLP projections (peft)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self):
        self.rank = as_int("rank", self.rank, minimum=1)
        self.alpha = as_float("alpha", self.alpha, above=0.0)
        self.dropout = as_float("dropout", self.dropout, minimum=0.0)
        if self.dropout >= 1:
            raise ValueError(f"dropout must be < 1, got {self.dropout}")
        if isinstance(self.target_modules, str) or not self.target_modules or \
                not all(isinstance(m, str) and m for m in self.target_modules):
            raise TypeError(f"target_modules must be a non-empty list of module names, got {self.target_modules!r}")


class ArmTrainer:
    """Trains a causal LM as a GenARM reward model on ``StepPair``s.

    ``lora=None`` fine-tunes every weight; with ``LoraSettings`` only peft adapters train
    and ``save`` writes the adapters (or the merged model). ``gradient_checkpointing`` trades compute for
    activation memory (8B models on one GPU).
    """

    def __init__(self, model, tokenizer, pairs: Sequence[StepPair], *, beta: float = 0.05,
                 config: Optional[TrainConfig] = None, lora: Optional[LoraSettings] = None, chat: bool = False,
                 max_length: int = 1024, gradient_checkpointing: bool = False, nll_weight: float = 0.0):
        beta = as_float("beta", beta, above=0.0)
        max_length = as_int("max_length", max_length, minimum=2)
        self.nll_weight = as_float("nll_weight", nll_weight, minimum=0.0)
        as_bool("chat", chat)
        as_bool("gradient_checkpointing", gradient_checkpointing)
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if lora is not None and not isinstance(lora, LoraSettings):
            raise TypeError(f"lora must be a LoraSettings or None, got {type(lora).__name__}")
        self.config = config or TrainConfig()
        self.ctx: DistributedContext = distributed_context(self.config.device)
        self.tokenizer = tokenizer
        self.beta = float(beta)
        self.chat = chat
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.lora = lora
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        else:
            model.requires_grad_(True)
        self.model = model.to(self.ctx.device)
        self.pairs = list(pairs)
        self.encoded = [self.encode(p) for p in self.pairs]

    def encode(self, pair: StepPair):
        context = pair_context(pair, self.tokenizer, self.chat)
        return (encode_completion(self.tokenizer, context, pair.chosen, self.max_length),
                encode_completion(self.tokenizer, context, pair.rejected, self.max_length))

    def pair_logps(self, model, encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of the chosen and rejected steps, one forward for both ([n] each)."""
        rows = [e[0] for e in encoded] + [e[1] for e in encoded]
        batch: CompletionBatch = collate_completions(rows, self.pad_id, self.ctx.device)
        logps = (token_logprobs(completion_logits(model, batch), batch.targets) * batch.target_mask).sum(-1)
        return logps[:len(encoded)], logps[len(encoded):]

    def _loss(self, model, indices):
        encoded = [self.encoded[i] for i in indices]
        chosen, rejected = self.pair_logps(model, encoded)
        loss = arm_loss(chosen, rejected, self.beta, reduction="sum")
        if self.nll_weight:
            lengths = torch.tensor([len(e[0][1]) for e in encoded], dtype=chosen.dtype, device=chosen.device)
            loss = loss - self.nll_weight * (chosen / lengths).sum()
        return loss, {"pair_acc": (chosen > rejected).sum().item()}

    def warm_start(self, examples: Sequence[tuple[str, str]], config: Optional[TrainConfig] = None) -> list[dict]:
        """SFT of the reward model (its LoRA adapters, or every weight) on ``(question, solution)``
        pairs before the pair loss, as GenARM initialises its ARM from an SFT model. The question is
        rendered as the pairs' prompts are (chat template with ``chat``); the solution is the target,
        followed by the tokenizer's EOS so the model also learns where a solution ends."""
        from .sft import train_causal_lm

        eos = self.tokenizer.eos_token or ""
        pairs = [(render_prompt(q, self.tokenizer, self.chat), s + eos) for q, s in examples]
        return train_causal_lm(self.model, self.tokenizer, pairs, config or self.config, self.max_length,
                               train_all=self.lora is None, description="reward model SFT")

    def train(self) -> list[dict]:
        task = TrainingTask(self.model, len(self.encoded), lambda i: 1.0, self._loss, description="reward model",
                            metric_names=("pair_acc",))
        return run_training(task, self.config, self.ctx)

    @torch.no_grad()
    def evaluate(self, pairs: Sequence[StepPair], batch_size: Optional[int] = None) -> dict:
        """Mean ARM loss and pair accuracy (chosen summed log-prob > rejected) on ``pairs``."""
        batch_size = batch_size or self.config.micro_batch_size
        encoded = [self.encode(p) for p in pairs]
        self.model.eval()
        loss, correct = 0.0, 0
        for s in range(0, len(encoded), batch_size):
            chosen, rejected = self.pair_logps(self.model, encoded[s:s + batch_size])
            loss += arm_loss(chosen, rejected, self.beta, reduction="sum").item()
            correct += int((chosen > rejected).sum())
        return {"loss": loss / len(encoded), "pair_acc": correct / len(encoded)}

    def save(self, output_dir: str, *, base_model: Optional[str] = None) -> None:
        """Write the reward model (rank 0 writes).

        With LoRA and ``base_model`` (the name or path the base was loaded from, as
        ``taro_ext.models.load_model`` takes it), only the adapters and the tokenizer are
        written (megabytes, not the whole model); ``load_model`` loads such a directory by
        loading ``base_model`` and merging. Otherwise the full model is written (LoRA merged
        into the weights first, in place: call it once training is over), loadable with
        ``AutoModelForCausalLM.from_pretrained``. The directory is replaced atomically (a kill at
        any moment leaves the previous model or this one; checkpoints and ``train_log.json`` in
        it are kept).
        """
        adapter_only = self.lora is not None and base_model is not None
        if self.lora is not None and not adapter_only:
            self.model = self.model.merge_and_unload()
            self.lora = None
        if not self.ctx.is_main:
            return
        if adapter_only:
            self.model.peft_config["default"].base_model_name_or_path = base_model

        def fill(tmp: str) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        replace_directory(output_dir, fill, carry=TRAINING_RUN_ENTRIES,
                          is_artifact=lambda d: any(os.path.isfile(os.path.join(d, name))
                                                    for name in ("config.json", ADAPTER_CONFIG)))
