"""Reward models: the reward registry (rewards), what one trains with (config), the model being
trained (reward_model), the mitigations, the trainer, evaluation, checkpoints, and precision checks."""
