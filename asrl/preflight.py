"""Checks that need imports or I/O, run by ``asrl train`` after the config loads and before
the model does: a typo should cost seconds, not a model load.

``load_config`` only reads YAML and checks values. :func:`preflight` then checks what the
config names: the method is registered, a local model path exists, custom reward modules
import, optional packages asked for (math-verify, reasoning-gym, openai, wandb, trackio) are
installed, a judge's API key is set, a reasoning-gym task exists. Only modules named in the
config are imported; nothing in the data is ever run.
"""

from __future__ import annotations

import os
from pathlib import Path

from asrl.config.schema import Config, JudgeConfig, RewardConfig
from asrl.errors import ConfigError


def preflight(cfg: Config) -> Config:
    """Raise :class:`ConfigError` naming the key if ``cfg`` cannot run here; return ``cfg``."""
    from asrl.methods import METHODS

    if cfg.schedule.method not in METHODS:
        raise ConfigError(
            f"schedule.method: '{cfg.schedule.method}' is not one of {', '.join(sorted(METHODS))}"
        )
    check_model_path(cfg.model.name)
    for key, where in (
        ("data.path", cfg.data.path),
        ("grpo.question_source", cfg.grpo.question_source),
    ):
        if where.startswith("reasoning_gym:"):
            from asrl.data.gym import check_task  # reasoning-gym is an optional extra

            check_task(where.split(":", 1)[1], cfg.data.reasoning_gym.options, key)
    _check_rewards(cfg.reward)
    from asrl.tracking.trackers import check_available

    check_available(cfg.report_to)  # wandb / trackio asked for but not installed: say so now
    return cfg


def _check_rewards(r: RewardConfig) -> None:
    if r.correctness == "math_verify":
        from asrl.rewards.builtin import require_math_verify

        require_math_verify()
    from asrl.rewards.builtin import import_reward

    for i, c in enumerate(r.custom):
        try:
            import_reward(c.path)
        except ConfigError as e:
            raise ConfigError(f"reward.custom[{i}].path: {str(e).split(': ', 1)[1]}") from e
    _check_judge(r.judge)


def _check_judge(j: JudgeConfig) -> None:
    """Without the network: the endpoint itself is probed when the rewards are built."""
    if j.weight == 0:
        return
    if j.api_key_env is not None and not os.environ.get(j.api_key_env):
        raise ConfigError(
            f"reward.judge.api_key_env: environment variable {j.api_key_env} is not set (or "
            "empty); export the key there, or remove api_key_env for a server that needs none"
        )
    from asrl.rewards.judge import import_openai

    import_openai()


def check_model_path(name: str) -> None:
    """A name that is clearly a local path (or a .gguf file) must exist.

    A hub id looks like ``org/name``; absolute, ``./``, ``../``, ``~`` and deeper paths are
    local, and from_pretrained would fail on them only after seconds of imports and with a
    message about the hub.
    """
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.name: GGUF file not found: {path}")
        return
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if local and not Path(name).expanduser().is_dir():
        raise ConfigError(
            f"model.name: model directory not found: {Path(name).expanduser()} (give a "
            "directory holding config.json, a .gguf file, a hub id already in the local "
            "cache, or smollm2-135m)"
        )
