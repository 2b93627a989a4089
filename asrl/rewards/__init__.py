"""Rewards: the built-in format and correctness rewards, custom functions, the LLM judge.

``asrl.rewards:reasoning_gym_correctness`` is the path to give ``reward.custom`` (or TRL) for
reasoning-gym's own scorers with the paper's tags.
"""

from asrl.rewards.builtin import reasoning_gym_correctness

__all__ = ["reasoning_gym_correctness"]
