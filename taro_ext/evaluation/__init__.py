"""Evaluation: answer graders, evaluation-set loaders, and the harness behind ``taro-ext eval``."""
from .graders import TASKS, extract_choice, extract_number_answer, grade

__all__ = ["grade", "TASKS", "extract_choice", "extract_number_answer"]
