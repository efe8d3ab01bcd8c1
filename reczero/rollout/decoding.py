"""Turning a policy into scored ratings: greedy, expected (probability-weighted) and self-consistency decoding.

`decode_batch` is the one decode-and-score path: validation during training (`modules.base`),
`reczero evaluate` and `reczero predict` all call it on left-padded prompt batches (`input_ids [B, P]`)
and score every completion with `rewards.score_batch` (format, copy check, grounding, reward):

- `greedy` (the paper's protocol): one greedy completion; the rating is the number in the LAST
  rating block (`answers.parse_rating`), None when it does not parse to a value inside the scale.
- `expected`: greedy reasoning, then the model's own distribution over the rating at the rating
  block: the next-token distribution after the prompt plus the completion up to and including the
  last `<rate>` (and the whitespace the model wrote after it, where that ends on a token boundary),
  read off the decoding step that computed it (`engine.Watch`; one extra forward only where the
  cut falls inside a token or in the response prefix); the softmax
  probabilities of the scale values' tokens are summed per value, renormalised over those values
  and averaged: ``sum_v v * p(v) / sum_v p(v)``. `rate_mass` records ``sum_v p(v)`` before
  renormalising (how much of the distribution the rating tokens held). Without a `<rate>` in the
  completion the greedy parse is used.
  Only values written as ONE token are covered (`rating_candidates`): "1".."5" on a 1-5 scale; on a
  half-star scale the halves ("4.5" is three tokens) are not, and "4" then also carries the mass of
  "4.5" (the expectation is over whole stars); "10" is two tokens in many tokenizers. The covered
  values are reported; fewer than two covered values is an error.
- `self_consistency`: `samples` completions at `temperature`; the rating is the mean of the
  parsable, in-scale ratings among them (unparsable samples are ignored; None when none parse).

This module imports torch, the pure method and the rollout engine only; models come in from the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from reczero import answers, prompts, rewards
from reczero.data.batching import left_pad, pad_id, scale_of
from reczero.rollout.engine import SamplingConfig, Watch, generate
from reczero.rollout.merge import merged_lora
from reczero.scale import RatingScale

log = logging.getLogger(__name__)

MODES = ("greedy", "expected", "self_consistency")


@dataclass
class DecodeConfig:
    """How ratings are decoded (`--decoding`, `--samples`, `--temperature`, ...). How they are scored
    (template, format rules, copy check) is the `rewards.RewardSpec` passed next to it.

    mode: greedy | expected | self_consistency (module docstring).
    max_new_tokens: completion budget per sample (None: the caller's default).
    samples / temperature / top_p: self_consistency only.
    seed: self_consistency sampling seed.
    """

    mode: str = "greedy"
    max_new_tokens: int | None = 256
    samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decode.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.mode == "self_consistency" and self.temperature <= 0:
            raise ValueError("self_consistency needs temperature > 0 (at 0 every sample is the greedy one)")

    @property
    def num_samples(self) -> int:
        return self.samples if self.mode == "self_consistency" else 1

    def sampling(self, template: answers.Template) -> SamplingConfig:
        """Sampling settings that stop where the template's answer ends (`answers.Template.stop_strings`)."""
        temperature = self.temperature if self.mode == "self_consistency" else 0.0
        return SamplingConfig(
            temperature=temperature,
            top_p=self.top_p if temperature > 0 else 1.0,
            max_new_tokens=self.max_new_tokens,
            stop_strings=template.stop_strings,
        )


@dataclass
class Decoded:
    """One prompt's decoded rating.

    prediction: the rating (inside the scale) or None when nothing parsed (the caller's fallback applies).
    completions: the sampled texts with the response prefix in front (1, or `samples` for self_consistency).
    parsed: the number parsed from each completion's last rating block (not scale-checked), or None.
    format_ok: `rewards.check_format` of each completion.
    finished: each completion ended by EOS or the stop string (False: it hit max_new_tokens).
    rate_mass: expected mode: probability of the covered rating tokens at the rating position; else None.
    copied / grounded: per completion, whether its reasoning copies the prompt's skeleton or example,
        and whether it is no copy and names facts of this prompt in both analyses (`rewards`).
    greedy: expected mode: the greedy completion's own rating (inside the scale), so one pass scores both.
    rewards: each completion's total reward against the batch's `target` (None for requests without one).
    """

    prediction: float | None
    completions: list[str]
    parsed: list[float | None]
    format_ok: list[bool]
    finished: list[bool]
    rate_mass: float | None = None
    copied: list[bool] = field(default_factory=list)
    grounded: list[bool] = field(default_factory=list)
    greedy: float | None = None
    rewards: list[float] | None = None

    def json_fields(self) -> dict:
        return output_fields(self.completions, self.format_ok, self.rate_mass)


def output_fields(completions: list[str], format_ok: list[bool], rate_mass: float | None) -> dict:
    """The decoding part of an output JSON line, shared by `evaluate` and `predict`: one completion
    as scalars, several as lists, `rate_mass` only in expected-rating mode."""
    row: dict = {"format_ok": format_ok[0] if len(format_ok) == 1 else format_ok, "completion": completions[0]}
    if len(completions) > 1:
        row["completions"] = completions
    if rate_mass is not None:
        row["rate_mass"] = rate_mass
    return row


@dataclass
class RatingCandidates:
    """Rating values written as one token: `token_ids [K]` and the value each stands for `values [K]`."""

    token_ids: torch.Tensor
    values: torch.Tensor
    covered: list[float] = field(default_factory=list)
    missing: list[float] = field(default_factory=list)


def rating_candidates(tokenizer, scale: RatingScale) -> RatingCandidates:
    """The single tokens that write each scale value, bare ("4") or after a space (" 4").

    A value whose text is several tokens in both forms is left out (listed in `missing`).
    """
    ids: list[int] = []
    values: list[float] = []
    covered, missing = [], []
    owner: dict[int, float] = {}
    for value in scale.values():
        text = prompts.format_rating(value, scale)
        found = False
        for variant in (text, " " + text):
            tok = tokenizer.encode(variant, add_special_tokens=False)
            if len(tok) != 1 or tokenizer.decode(tok) != variant:
                continue
            if tok[0] in owner:  # cannot happen for distinct texts; guard against odd vocabularies
                continue
            owner[tok[0]] = value
            ids.append(tok[0])
            values.append(value)
            found = True
        (covered if found else missing).append(value)
    if len(covered) < 2:
        raise ValueError(
            f"expected decoding needs at least two {scale.name} values written as single tokens; "
            f"this tokenizer covers {covered or 'none'}: use greedy or self_consistency decoding"
        )
    return RatingCandidates(
        torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float64), covered, missing
    )


def expected_from_logits(logits: torch.Tensor, candidates: RatingCandidates) -> tuple[float | None, float]:
    """logits [V] at the rating position -> (probability-weighted rating, mass on the candidates).

    ``p = softmax(logits)``; ``E = sum_k v_k p_k / sum_k p_k`` over the candidate tokens k (two
    tokens of one value simply add up). None when the candidates hold no probability at all.
    """
    return expected_from_probs(logits.double().softmax(dim=-1)[candidates.token_ids.to(logits.device)], candidates)


def expected_from_probs(probs: torch.Tensor, candidates: RatingCandidates) -> tuple[float | None, float]:
    """probs [K] of the candidate tokens at the rating position -> (expected rating, their mass)."""
    probs = probs.double().cpu()
    mass = float(probs.sum())
    if mass <= 0.0:
        return None, 0.0
    return float((probs * candidates.values).sum() / mass), mass


def mean_rating(parsed: list[float | None], scale: RatingScale) -> float | None:
    """Self-consistency: the mean of the parsable ratings inside the scale; None when there are none."""
    valid = [p for p in parsed if p is not None and scale.contains(p)]
    return sum(valid) / len(valid) if valid else None


def _rate_context(
    tokens: list[int], completion: str, prefix: str, tokenizer, open_tag: str
) -> tuple[list[int] | None, bool]:
    """The completion tokens to append to the prompt so the next token is the rating.

    Returns (tokens, found): found is False when no `open_tag` is in prefix + completion. The cut is
    after the last `open_tag` plus the whitespace the model wrote after it, or right after the tag,
    whichever falls on a boundary of the generated tokens (the model's own tokenisation); if neither
    does (a token spans the tag's end), the text up to the tag is re-tokenised.
    """
    full = prefix + completion
    at = full.rfind(open_tag)
    if at < 0:
        return None, False
    end = at + len(open_tag) - len(prefix)  # in completion characters
    if end == 0:  # the tag closes the response prefix: the prompt alone is the context
        return [], True
    if end < 0:  # inside the prefix, with more prefix after it: no clean cut, use the greedy parse
        return None, False
    spaced = end + len(completion[end:]) - len(completion[end:].lstrip())
    at_end = None
    for k in range(len(tokens) + 1):  # prefixes of the generated tokens, until they pass the cut
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        if text == completion[:spaced]:
            return tokens[:k], True
        if text == completion[:end]:
            at_end = k
        if len(text) > spaced:
            break
    if at_end is not None:
        return tokens[:at_end], True
    return tokenizer.encode(completion[:end], add_special_tokens=False), True


@torch.no_grad()
def last_logits(model, contexts: list[list[int]], pad: int, device) -> torch.Tensor:
    """One forward over left-padded token lists: the logits at each one's last position [N, V]."""
    ids, mask = left_pad(contexts, pad)  # [N, L] each
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [N, L]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    return out.logits[:, -1, :]  # [N, V]


@torch.no_grad()
def decode_batch(
    model,
    tokenizer,
    batch: dict,
    cfg: DecodeConfig,
    spec: rewards.RewardSpec,
    response_prefix: str = "",
    generator: torch.Generator | None = None,
    candidates: RatingCandidates | None = None,
) -> list[Decoded]:
    """Decode and score a rating for each prompt of a `PromptCollator` batch; the model must be in eval mode.

    The batch's `scale`, `copy_sources` and `facts` feed the format and copy checks and the grounding
    measure (`rewards.score_batch`); rewards are computed against `target`, or, for requests without
    one (`target` None), against `fallback` and not reported.
    """
    g, scale, watch = cfg.num_samples, scale_of(batch), None
    device = next(model.parameters()).device
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # [B, P]
    template = rewards.get_template(spec.template)
    sampling = cfg.sampling(template)
    if cfg.mode == "expected":
        candidates = candidates or rating_candidates(tokenizer, scale)
        watch = Watch(f"<{template.rating_tag}>", candidates.token_ids)
    with merged_lora(model):
        gen = generate(model, tokenizer, input_ids, attention_mask, g, sampling, generator, watch=watch)
    texts = [response_prefix + t for t in gen.texts]  # [B*G], prompt-major
    has_target = batch.get("target") is not None
    per_row = lambda key: None if batch.get(key) is None else [x for x in batch[key] for _ in range(g)]  # noqa: E731
    truth = [float(t) for t in per_row("target" if has_target else "fallback")]  # [B*G]
    scored = rewards.score_batch(texts, truth, scale, spec, per_row("copy_sources"), per_row("facts"))
    parsed = [s.parsed for s in scored]  # `answers.parse_rating` of the rating tag, scale not checked
    finished = gen.finished.tolist()
    out = []
    for b in range(input_ids.shape[0]):
        rows = slice(b * g, (b + 1) * g)
        if cfg.mode == "self_consistency":
            prediction = mean_rating(parsed[rows], scale)
        else:
            p = parsed[b]
            prediction = p if p is not None and scale.contains(p) else None
        out.append(
            Decoded(
                prediction,
                texts[rows],
                parsed[rows],
                [s.format_ok for s in scored[rows]],
                finished[rows],
                None,
                [s.copied for s in scored[rows]],
                [s.grounded_answer for s in scored[rows]],
                greedy=prediction if cfg.mode != "self_consistency" else None,
                rewards=[s.total for s in scored[rows]] if has_target else None,
            )
        )
    if cfg.mode == "expected":
        _add_expectations(
            model, tokenizer, input_ids, attention_mask, gen, out, cfg, spec, scale, response_prefix, candidates
        )
    return out


def _add_expectations(
    model, tokenizer, input_ids, attention_mask, gen, out, cfg, spec, scale, prefix, candidates
) -> None:
    """Replace each greedy prediction by the expectation at its last rating tag (where there is one).

    The distribution recorded while decoding (`Generation.watched`) is used where it was taken at the
    same cut `_rate_context` makes; other rows (a cut inside a token, the tag in the response prefix)
    get one forward over prompt + completion up to the cut.
    """
    candidates = candidates or rating_candidates(tokenizer, scale)
    rating_tag = rewards.get_template(spec.template).rating_tag
    contexts, rows = [], []
    for b in range(len(out)):
        length = int(gen.lengths[b])
        ctx, found = _rate_context(gen.tokens[b, :length].tolist(), gen.texts[b], prefix, tokenizer, f"<{rating_tag}>")
        if not found:
            continue
        if gen.watched is not None and int(gen.watched_at[b]) == len(ctx):
            _set_expectation(out[b], expected_from_probs(gen.watched[b], candidates))
        else:
            prompt = input_ids[b][attention_mask[b].bool()].tolist()  # unpadded prompt
            contexts.append(prompt + ctx)
            rows.append(b)
    if not contexts:
        return
    logits = last_logits(model, contexts, pad_id(tokenizer), input_ids.device)  # [N, V]
    for row, b in enumerate(rows):
        _set_expectation(out[b], expected_from_logits(logits[row], candidates))


def _set_expectation(decoded: Decoded, expectation: tuple[float | None, float]) -> None:
    value, decoded.rate_mass = expectation
    if value is not None:
        decoded.prediction = value
