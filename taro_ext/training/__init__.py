"""Training TARo's two learned parts: the GenARM reward model (``ArmTrainer``) and the router
(``RouterTrainer``), plus plain next-token fine-tuning (``train_causal_lm``) for synthetic
experiments. All run the one loop in ``loop.run_training`` (single process or ``torchrun``)."""
from .arm import ArmTrainer, LoraSettings, arm_loss
from .config import TrainConfig
from .loop import run_training
from .router_training import RouterTrainer, alpha_statistics, format_alpha_table, mixed_nll
from .sft import train_causal_lm

__all__ = ["arm_loss", "ArmTrainer", "LoraSettings", "RouterTrainer", "TrainConfig", "run_training",
           "train_causal_lm", "alpha_statistics", "format_alpha_table", "mixed_nll"]
