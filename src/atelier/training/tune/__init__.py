"""Hyperparameter search (`atelier tune`): a search space over the training config, an Optuna
study in RDB storage shared by worker processes, the best config as a training YAML."""
