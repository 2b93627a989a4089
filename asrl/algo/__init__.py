"""Pure maths of the losses: per-token log-probs and entropies, GRPO advantages and losses."""
