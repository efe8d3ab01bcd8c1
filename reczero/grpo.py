"""GRPO math: group advantages, the clipped surrogate, k3 KL, truncation masking and loss reductions.

Algorithm variant and defaults (the paper's run, see method.md):

* G = 8 completions per prompt, group layout prompt-major: rows ``b*G .. b*G+G-1`` are prompt b's;
* advantage = (r - group mean) / (group std + 1e-4) (``scale="group"``; "batch" divides by the
  batch std, "none" only centres); a group whose rewards are all equal gets exactly 0;
* PPO-style clipped ratio, eps_low = eps_high = 0.2 (DAPO's clip-higher: eps_high = 0.28);
* one optimisation pass per rollout, so the old log-probs are the detached current ones: the ratio
  is 1 and the loss value is ~0, yet the gradient is -A * dlogp / n_tokens (no extra forward);
* no KL (beta = 0, no reference forward); with beta > 0 the per-token k3 estimator is added;
* token-mean loss over the whole batch (DAPO/bnpo); "sequence_mean" (original GRPO) and "dr_grpo"
  (sum / (N * max_completion_length)) are the alternatives. A batch split into micro-batches or
  across ranks divides every part by the whole batch's denominator (`loss_denominator`), so the
  parts add up to the loss of the whole;
* with beta 0 and one pass, rows of advantage 0 add exactly 0 to the gradient: `signal_rows` names
  the others, the only ones that need a forward and backward.

Only torch is imported; the LightningModule feeds these functions and never inlines the math.
Shapes: N = B*G completions, T = completion length (right-padded), V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADVANTAGE_SCALES = ("group", "batch", "none")
LOSS_TYPES = ("token_mean", "sequence_mean", "dr_grpo")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """The one place [B*G] becomes [B, G] (prompt-major: row b holds samples b*G .. b*G+G-1)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards cannot be split into groups of {group_size}: the batch must hold "
            "a whole number of prompts times num_generations completions"
        )
    return rewards.reshape(-1, group_size)  # [B, G]


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Per-completion advantage [B*G] from rewards [B*G] (layout in `_grouped`).

    ``r - mean(group)``, divided by ``std(group) + eps`` ("group"), by ``std(batch) + eps``
    ("batch") or by nothing ("none"); std is the unbiased one, as in TRL and verl. A group whose
    rewards are all equal teaches nothing and gets exactly 0 (not float noise / eps).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    values = rewards if rewards.is_floating_point() else rewards.float()
    grouped = _grouped(values, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if group_size == 1:
        return torch.zeros_like(values)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)  # [B, G]
    elif scale == "batch":
        centred = centred / (values.std() + eps)  # [B, G]
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [B, 1]
    centred = centred.masked_fill(constant, 0.0)  # [B, G]
    return centred.reshape(-1)  # [B*G]


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of prompts whose G rewards are all equal (their advantage is 0: no learning signal)."""
    grouped = _grouped(rewards, group_size)  # [B, G]
    if grouped.shape[0] == 0:
        return 0.0
    return (grouped.amax(dim=1) == grouped.amin(dim=1)).float().mean().item()


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0, log_ratio_clamp: float = 20.0
) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) [N, T]: ``exp(d) - d - 1``, d = ref - logp.

    logp, ref_logp [N, T]. d is clamped to +-`log_ratio_clamp` and the result to +-`clamp` (verl's
    bounds) so one extreme token cannot overflow to inf/NaN. Non-negative up to rounding.
    """
    delta = (ref_logp - logp).clamp(-log_ratio_clamp, log_ratio_clamp)  # [N, T]
    return (torch.exp(delta) - delta - 1.0).clamp(-clamp, clamp)  # [N, T]


def _ratio(logp: torch.Tensor, old_logp: torch.Tensor, log_ratio_clamp: float) -> torch.Tensor:
    """Importance ratio pi / pi_old [N, T], with the log-ratio clamped against overflow."""
    return torch.exp((logp - old_logp).clamp(-log_ratio_clamp, log_ratio_clamp))  # [N, T]


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    log_ratio_clamp: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped objective per token, as a loss: ``-min(ratio * A, clip(ratio, 1-eps_low, 1+eps_high) * A)``.

    logp, old_logp [N, T]; advantages [N] (one per completion, broadcast over its tokens).
    Returns (per_token_loss [N, T], clipped [N, T] bool): clipped is True where the clipped branch
    is the active one (ratio below 1-eps_low with A < 0, or above 1+eps_high with A > 0), i.e.
    where the token gets no gradient.
    """
    ratio = _ratio(logp, old_logp, log_ratio_clamp)  # [N, T]
    adv = advantages.unsqueeze(-1)  # [N, 1]
    unclipped = ratio * adv  # [N, T]
    clipped_obj = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv  # [N, T]
    clipped = ((ratio < 1.0 - eps_low) & (adv < 0)) | ((ratio > 1.0 + eps_high) & (adv > 0))  # [N, T]
    return -torch.minimum(unclipped, clipped_obj), clipped


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is True (whole tensor, or along `dim`); 0 where nothing counts.

    values, mask [N, T]. Masked-out entries are replaced, not multiplied, so an inf/NaN there
    cannot leak into the result.
    """
    mask = mask.bool()
    kept = torch.where(mask, values, torch.zeros_like(values))  # [N, T]
    if dim is None:
        return kept.sum() / mask.sum().clamp(min=1)
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def loss_denominator(
    completion_mask: torch.Tensor, loss_type: str = "token_mean", max_completion_length: int | None = None
) -> torch.Tensor:
    """What `reduce_loss` divides by, for the batch `completion_mask` [N, T] covers (a float 0-dim tensor).

    "token_mean": the counted tokens; "sequence_mean": the completions with a counted token;
    "dr_grpo": N * `max_completion_length` (the padded width T when None). A loss split into
    micro-batches or across ranks is exact when every part divides by the denominator of the whole
    (summed over the parts), not by its own: `reduce_loss(..., denominator=...)`.
    """
    mask = completion_mask.bool()
    if loss_type == "token_mean":
        return mask.sum().float()
    if loss_type == "sequence_mean":
        return mask.any(dim=1).sum().float()
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        if length < 1:
            raise ValueError(f"max_completion_length must be >= 1, got {length}")
        return torch.tensor(float(mask.shape[0] * length), device=mask.device)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def reduce_loss(
    per_token: torch.Tensor,
    completion_mask: torch.Tensor,
    loss_type: str = "token_mean",
    max_completion_length: int | None = None,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss [N, T] to a scalar over the tokens where `completion_mask` [N, T] is True.

    "token_mean": sum over all counted tokens / their number (DAPO; the paper's choice).
    "sequence_mean": mean over each completion's tokens, summed over the completions, / the number
        of completions that have at least one counted token (original GRPO; favours short completions).
    "dr_grpo": sum / (N * max_completion_length), a constant denominator (Dr. GRPO); when
        `max_completion_length` is None the padded width T is used.
    `denominator` replaces this batch's own (`loss_denominator`, at least 1) when the batch is one
    part of a larger one: the parts' losses then add up to the loss of the whole.
    """
    if per_token.shape != completion_mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(completion_mask.shape)} differ")
    mask = completion_mask.bool()
    if denominator is None:
        denominator = loss_denominator(mask, loss_type, max_completion_length).clamp(min=1)
    elif loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).sum() / denominator  # [N] -> scalar
    kept = torch.where(mask, per_token, torch.zeros_like(per_token))  # [N, T]
    return kept.sum() / denominator


def loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens the loss counts: `completion_mask` [N, T], without the rows of `truncated` [N] (bool:
    completions that hit the length limit without EOS) when it is given (`GRPOLossConfig.mask_truncated`)."""
    mask = completion_mask.bool()  # [N, T]
    if truncated is None:
        return mask
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be [N] = [{mask.shape[0]}], got {tuple(truncated.shape)}")
    return mask & ~truncated.bool().unsqueeze(-1)  # [N, T]


def signal_rows(advantages: torch.Tensor, group_size: int, whole_groups: bool = False) -> torch.Tensor:
    """Indices [M] of the rows whose gradient can be non-zero with beta 0 and one pass.

    There the ratio is 1 and a row's loss is ``-A * ratio``: a row of advantage exactly 0 adds exactly
    0 to the gradient (but its tokens still count in the denominator). A NaN advantage is kept, so a
    poisoned step still shows as non-finite. With `whole_groups` (the shared-prefix forward runs
    whole groups) a group is kept whole when any of its rows is. advantages [N = B*G], prompt-major.
    """
    keep = advantages != 0  # [N]
    if whole_groups:
        keep = _grouped(keep, group_size).any(dim=1).repeat_interleave(group_size)  # [B] -> [N]
    return keep.nonzero().squeeze(-1)  # [M]


@dataclass
class GRPOLossConfig:
    """The loss half of the GRPO config (defaults = the paper's run).

    beta: weight of the k3 KL to the reference; 0 skips the reference forward entirely.
    eps_low / eps_high: ratio clip range [1 - eps_low, 1 + eps_high] (DAPO clip-higher: eps_high 0.28).
    loss_type: "token_mean" | "sequence_mean" | "dr_grpo" (see `reduce_loss`).
    mask_truncated: drop completions that hit the length limit without EOS from the loss.
    log_ratio_clamp / kl_clamp: overflow guards on log-ratios and on the k3 value (verl: 20 / 10).
    """

    beta: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_type: str = "token_mean"
    mask_truncated: bool = False
    log_ratio_clamp: float = 20.0
    kl_clamp: float = 10.0

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 <= self.eps_low < 1:
            raise ValueError(f"eps_low must be in [0, 1), got {self.eps_low}")
        if self.eps_high < 0:
            raise ValueError(f"eps_high must be >= 0, got {self.eps_high}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.log_ratio_clamp <= 0 or self.kl_clamp <= 0:
            raise ValueError("log_ratio_clamp and kl_clamp must be > 0")


def grpo_loss(
    logp: torch.Tensor,
    completion_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    cfg: GRPOLossConfig | None = None,
    truncated: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss and its logging stats.

    logp [N, T]: current policy log-probs of the completion tokens (with grad).
    completion_mask [N, T] bool: True on real completion tokens (not prompt, not padding).
    advantages [N]: from `group_advantages`.
    old_logp [N, T]: rollout-time log-probs; None means one pass per rollout, i.e. ``logp.detach()``.
    ref_logp [N, T]: reference log-probs, required when cfg.beta > 0 (also logged as "kl" if given).
    truncated [N] bool: completions that ended without EOS; removed when cfg.mask_truncated.
    denominator: the loss denominator of the whole batch these rows are part of (`reduce_loss`).

    Returns (loss, stats) where stats holds detached 0-dim tensors: "loss", "policy_loss",
    "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "token_count" and "kl" (when
    ref_logp is given). Fractions and means are over counted tokens.
    """
    cfg = cfg or GRPOLossConfig()
    if logp.dim() != 2 or completion_mask.shape != logp.shape:
        raise ValueError(
            f"logp and completion_mask must both be [N, T], got {tuple(logp.shape)}, {tuple(completion_mask.shape)}"
        )
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}], got {tuple(advantages.shape)}")
    for name, other in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} must match logp {tuple(logp.shape)}, got {tuple(other.shape)}")
    mask = loss_mask(completion_mask, truncated if cfg.mask_truncated else None)  # [N, T]
    if old_logp is None:
        old_logp = logp.detach()

    advantages = advantages.to(logp.dtype)
    per_token, _ = clipped_surrogate(logp, old_logp, advantages, cfg.eps_low, cfg.eps_high, cfg.log_ratio_clamp)
    policy_loss = reduce_loss(per_token, mask, cfg.loss_type, max_completion_length, denominator)
    loss = policy_loss
    stats: dict[str, torch.Tensor] = {}
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (the reference model's log-probs)")
        kl = k3_kl(logp, ref_logp, cfg.kl_clamp, cfg.log_ratio_clamp)  # [N, T]
        loss = policy_loss + cfg.beta * reduce_loss(kl, mask, cfg.loss_type, max_completion_length, denominator)
        stats["kl"] = masked_mean(kl.detach(), mask)
    elif ref_logp is not None:
        stats["kl"] = masked_mean(k3_kl(logp.detach(), ref_logp, cfg.kl_clamp, cfg.log_ratio_clamp), mask)

    with torch.no_grad():
        ratio = _ratio(logp.detach(), old_logp, cfg.log_ratio_clamp)  # [N, T]
        adv = advantages.detach().unsqueeze(-1)  # [N, 1]
        low = (ratio < 1.0 - cfg.eps_low) & (adv < 0)  # [N, T]
        high = (ratio > 1.0 + cfg.eps_high) & (adv > 0)  # [N, T]
        stats.update(
            loss=loss.detach(),
            policy_loss=policy_loss.detach(),
            clip_frac_low=masked_mean(low.float(), mask),
            clip_frac_high=masked_mean(high.float(), mask),
            clip_frac=masked_mean((low | high).float(), mask),
            ratio_mean=masked_mean(ratio, mask),
            token_count=mask.sum().float(),
        )
    return loss, stats
