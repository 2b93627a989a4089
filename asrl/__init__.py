"""asrl: Alternating Supervised and Reinforcement Learning for small language models.

from asrl import load_config, train
summary = train(load_config("configs/demo.yaml", ["schedule.epochs=2"]))
"""

from asrl.config import Config, ConfigError, load_config
from asrl.data.format import ThinkingFormat
from asrl.types import Example

__all__ = [
    "Config",
    "ConfigError",
    "Example",
    "ThinkingFormat",
    "load_config",
    "load_policy",
    "train",
]


def __getattr__(name: str):  # torch-heavy entry points load on first use
    if name == "train":
        from asrl.train.loop import train

        return train
    if name == "load_policy":
        from asrl.model.loading import load_policy

        return load_policy
    raise AttributeError(name)
