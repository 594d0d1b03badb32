"""Accuracy: data sets, fine-tuning and distillation, pruning schedules, DDP under torchrun, evaluation metrics, text data and its metrics."""
