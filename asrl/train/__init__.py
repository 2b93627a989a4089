"""The controller (the paper's Algorithm 1), its state, evaluation, checkpoints, signals."""
