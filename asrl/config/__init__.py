"""The configuration: ``schema`` (dataclasses and defaults), ``loading`` (YAML and ``--set``,
type checks), ``checks`` (value ranges and choices). Checks that import the modules a config
names, or touch the disk or network, are :func:`asrl.preflight.preflight`'s."""

from asrl.config.loading import config_from_dict, load_config, parse_override, yaml_load
from asrl.config.schema import *  # noqa: F403 (the dataclasses, JUDGE_PROMPT, choice lists)
from asrl.config.schema import Config
from asrl.errors import ConfigError

__all__ = [  # noqa: F405
    "Config",
    "ConfigError",
    "config_from_dict",
    "load_config",
    "parse_override",
    "yaml_load",
]
