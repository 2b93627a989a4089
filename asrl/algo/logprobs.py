"""Per-token log-probs (and entropies) of completions under a policy, temperature-scaled as
sampling was; a prompt shared by a group is run once."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asrl.model.cache import cache_kwargs, kv_cache
from asrl.model.numerics import upcast

# per-token log-probs, or (log-probs, entropies) when asked ``with_entropy``
LogpsOut = torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position. logits (B, T, V), targets (B, T) -> (B, T), fp32.

    Computed row by row so the (B, T, V) fp32 log-softmax never exists all at once.
    """
    return token_logps_entropy(logits, targets, entropy=False)[0]


def token_logps_entropy(
    logits: torch.Tensor, targets: torch.Tensor, entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``token_logps`` and, from the same log-softmax, the entropy of each position's
    distribution (nats, without gradient; None unless ``entropy``). -> (B, T), (B, T)."""
    out, ents = [], []
    for row_logits, row_targets in zip(logits, targets):  # (T, V), (T,)
        lp = F.log_softmax(upcast(row_logits), dim=-1)
        out.append(lp.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1))
        if entropy:
            with torch.no_grad():
                ents.append(-(lp.exp() * lp).sum(-1))
    return torch.stack(out), torch.stack(ents) if entropy else None


def completion_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> LogpsOut:
    """Log-probs of the last ``n_completion`` tokens of each row. -> (B, n_completion).

    Logits are divided by the sampling temperature, as TRL does, so the ratio compares the
    distribution the completions were actually sampled from. ``with_entropy``: returns
    (log-probs, entropies), the entropy of each position's tempered distribution computed
    from the same log-softmax (no gradient), as TRL's ``entropy`` metric.
    """
    # logits_to_keep=C+1 returns the logits that predict the last C tokens (plus one extra).
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=n_completion + 1,
        use_cache=False,
    ).logits[:, :-1]  # (B, C, V)
    return _tempered_logps(logits, input_ids[:, -n_completion:], temperature, with_entropy)


def _tempered_logps(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool = False
) -> LogpsOut:
    """``token_logps`` of logits divided by the sampling temperature (and the entropies)."""
    scaled = logits / temperature if temperature != 1.0 else logits
    if with_entropy:
        return token_logps_entropy(scaled, targets)
    return token_logps(scaled, targets)


def shared_prompt_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> LogpsOut:
    """``completion_logps`` with each distinct prompt run once (GRPO groups share one).

    Rows are left-padded prompts followed by right-padded completions. The distinct prompts
    are run once, their KV cache is copied to every row that has them (a differentiable
    copy: the gradient of the shared prompt sums over its rows, as it would with the prompt
    repeated), then the completions run on top. Equal to ``completion_logps`` (tested); it
    saves (rows - distinct prompts) x prompt length tokens of forward and backward.
    """
    C = n_completion
    P = input_ids.size(1) - C
    prompt_ids, prompt_mask = input_ids[:, :P], attention_mask[:, :P]
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(r), len(distinct)) for r in prompt_ids.tolist()]
    if len(distinct) == len(rows):
        return completion_logps(model, input_ids, attention_mask, C, temperature, with_entropy)
    first = torch.tensor([rows.index(u) for u in range(len(distinct))], device=input_ids.device)
    select = torch.tensor(rows, device=input_ids.device)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=prompt_ids[first],
        attention_mask=prompt_mask[first],
        position_ids=pos[first, :P],
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[select]  # (B, 1, V): the last prompt position predicts token 0
    if C > 1:
        cache = kv_cache(out)
        cache.batch_select_indices(select)
        rest = model(
            input_ids=input_ids[:, P : P + C - 1],
            attention_mask=attention_mask[:, : P + C - 1],
            position_ids=pos[:, P : P + C - 1],
            **cache_kwargs(model, cache),
            cache_position=torch.arange(P, P + C - 1, device=input_ids.device),
            use_cache=True,
        ).logits  # (B, C - 1, V)
        logits = torch.cat([logits, rest], dim=1)
    return _tempered_logps(logits, input_ids[:, P:], temperature, with_entropy)
