"""What an answer says: reward templates, the rating parse and the format check.

* `Template` / `TEMPLATES`: the tags a completion must write (the paper's four steps, or an ablation's).
* `parse_rating`: the number inside the LAST rating block; what rewards and evaluation both read.
* `check_format`: every rule of the paper's format check plus the copy rule (a reasoning block that
  copies the skeleton's hints or the one-shot example fails, `reasoning.find_copy`), with a reason code.
* `answer_grounding`: whether the analyses name facts of this prompt (`reasoning.grounding`).

Pure (standard library + `reczero.prompts`, `reczero.reasoning`, `reczero.scale`) and linear in the
text length: no regex that can backtrack, and nothing ever raises on text. `rewards` scores on top.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from reczero.prompts import STEP_TAGS
from reczero.reasoning import COPY_THRESHOLD, Grounding, PromptFacts, find_copy, grounding
from reczero.scale import RatingScale

# End-of-sequence strings that may survive decoding (skip_special_tokens=False); allowed after the last block.
EOS_MARKERS: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<eos>")

# ASCII digits only: str.isdigit / \d would also accept e.g. Arabic-Indic digits, which float() parses.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_STAR_SUFFIXES = ("stars", "star")


@dataclass(frozen=True)
class Template:
    """A completion layout: its tag names in order; the last one holds the rating, the others must be non-empty."""

    name: str
    tags: tuple[str, ...]

    @property
    def rating_tag(self) -> str:
        return self.tags[-1]

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Where sampling stops (training rollouts and evaluation alike): the rating tag's close."""
        return (f"</{self.rating_tag}>",)

    @property
    def n_tag_strings(self) -> int:
        """Open plus close tags (8 for the four-step template)."""
        return 2 * len(self.tags)


TEMPLATES: dict[str, Template] = {
    # The paper's "Think-before-Recommendation" layout.
    "four_step": Template("four_step", STEP_TAGS),  # what the prompt's skeleton asks for
    # Ablation: free reasoning then the rating.
    "think_answer": Template("think_answer", ("think", "answer")),
    # Ablation without reasoning: only `<answer>4</answer>` (same rating tag as think_answer, so the
    # two ablations differ only by the reasoning block).
    "answer_only": Template("answer_only", ("answer",)),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def parse_number(content: str) -> float | None:
    """The rating written in a block's content, or None.

    Accepted (everything else is None): optional surrounding whitespace; an optional sign; ASCII
    digits with an optional decimal point (``4``, ``4.5``, ``4.``, ``.5``, ``+4``, ``-0``); then
    optionally whitespace and ``star``/``stars`` (any case). The result must be finite.
    Rejected: fractions ``4/5``, ranges ``4-5``, words ``four``, several numbers ``4 or 5``,
    exponents ``1e3``, thousands separators ``1,000``, decimal commas ``4,5``, ``nan``, ``inf``,
    empty content, and any other text around the number (``Rating: 4``). Strict on purpose: the
    prompt asks for the number alone, and a lenient parser would reward hedged answers.
    """
    text = content.strip()
    for suffix in _STAR_SUFFIXES:
        if text[-len(suffix) :].lower() == suffix:
            text = text[: -len(suffix)].rstrip()
            break
    if not text or _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)  # Cannot raise after the fullmatch; huge digit strings give inf.
    return value if math.isfinite(value) else None


def _last_block(text: str, tag: str) -> str | None:
    """Content of the last complete ``<tag>...</tag>`` block: the last close and the last open before it."""
    close_at = text.rfind(f"</{tag}>")
    if close_at < 0:
        return None
    open_tag = f"<{tag}>"
    open_at = text.rfind(open_tag, 0, close_at)
    if open_at < 0:
        return None
    return text[open_at + len(open_tag) : close_at]


def parse_rating(text: str, tag: str = "rate") -> float | None:
    """The number inside the LAST ``<tag>...</tag>`` block of `text`, or None.

    The last block is the one ending at the last ``</tag>``, opened by the last ``<tag>`` before it
    (an unclosed trailing ``<tag>`` is ignored). Its content must be a single number as documented in
    `parse_number`. The result is not checked against a scale. Never raises; linear time.
    """
    if not isinstance(text, str):
        return None
    content = _last_block(text, tag)
    return None if content is None else parse_number(content)


@dataclass(frozen=True)
class FormatCheck:
    """The outcome of `check_format`.

    ok: the format passes. reason: "ok" or the first failure found (codes in `check_format`).
    tags_found: how many of the template's open/close tag strings occur exactly once (0..tags_total),
    the partial-credit signal. rating: the number in the last rating block (`parse_rating`), set even
    when the format fails, None when unparsable; when ok it is also inside the scale.
    """

    ok: bool
    reason: str
    tags_found: int
    rating: float | None
    tags_total: int = 8
    copied: bool = False


def _trailing_is_clean(tail: str) -> bool:
    """Whitespace and end-of-sequence markers only."""
    for marker in EOS_MARKERS:
        if marker in tail:
            tail = tail.replace(marker, "")
    return not tail.strip()


def reasoning_blocks(text: str, template: str = "four_step") -> list[str | None]:
    """The content of the last block of each reasoning tag of `template` (None where absent)."""
    return [_last_block(text, tag) for tag in get_template(template).tags[:-1]]


def answer_grounding(text: str, facts: PromptFacts, template: str = "four_step") -> Grounding:
    """`reasoning.grounding` of an answer: its user and item analyses (a template with one reasoning
    block, e.g. `<think>`, has that block judged for both; one without reasoning is never grounded)."""
    blocks = reasoning_blocks(text, template)
    if not blocks:
        return Grounding(False, False)
    user, item = (blocks[0], blocks[1]) if len(blocks) >= 2 else (blocks[0], blocks[0])
    return grounding(user, item, facts)


def check_format(
    text: str,
    scale: RatingScale,
    template: str = "four_step",
    allow_trailing_text: bool = False,
    copy_sources: Sequence[str] = (),
    copy_threshold: float = COPY_THRESHOLD,
    reject_copies: bool = True,
) -> FormatCheck:
    """Check a completion against the template's format rule (method.md), first failure wins.

    Checks, in this order, with the reason code reported for the first that fails:

    1. each tag of the template, in template order, occurs exactly once as open and as close tag:
       ``missing_tag:<name>`` (neither present), ``unclosed_tag:<name>`` (open only),
       ``unopened_tag:<name>`` (close only), ``duplicate_tag:<name>`` (either occurs twice or more);
    2. ``out_of_order``: the tags must read open1 < close1 < open2 < close2 < ..., which also rules
       out nested and overlapping blocks;
    3. ``empty_block:<name>``: every block but the rating block holds some non-whitespace text;
       ``copied_block:<name>``: and none repeats a text of `copy_sources` (the prompt's skeleton hints
       and one-shot example), exactly, with other case or spacing, or nearly (`reasoning.is_copy`;
       with `reject_copies` False a copy is only reported in `FormatCheck.copied`);
    4. ``unparsable_rating``: the rating block's content is one number (`parse_number`);
    5. ``rating_out_of_scale``: that number lies in ``[scale.low, scale.high]`` (continuous values allowed);
    6. ``trailing_text``: after the last close tag only whitespace and `EOS_MARKERS` may follow,
       unless `allow_trailing_text` (text after the answer is otherwise free, length-unbounded
       rambling that the reward would never discourage).

    Text before the first tag and between blocks is allowed (the paper's rule does not forbid it).
    Tags are matched exactly and case-sensitively. Never raises on any string; linear time.
    """
    spec = get_template(template)
    total = spec.n_tag_strings
    if not isinstance(text, str):
        return FormatCheck(False, "not_text", 0, None, total)
    rating = parse_rating(text, spec.rating_tag)
    blocks = [b for b in reasoning_blocks(text, template) if b is not None]
    copied = bool(copy_sources) and find_copy(blocks, copy_sources, copy_threshold) is not None

    counts = [(text.count(f"<{tag}>"), text.count(f"</{tag}>")) for tag in spec.tags]
    found = sum((n_open == 1) + (n_close == 1) for n_open, n_close in counts)

    def fail(reason: str) -> FormatCheck:
        return FormatCheck(False, reason, found, rating, total, copied)

    for tag, (n_open, n_close) in zip(spec.tags, counts):
        if n_open > 1 or n_close > 1:
            return fail(f"duplicate_tag:{tag}")
        if n_open == 0 and n_close == 0:
            return fail(f"missing_tag:{tag}")
        if n_close == 0:
            return fail(f"unclosed_tag:{tag}")
        if n_open == 0:
            return fail(f"unopened_tag:{tag}")

    # Each tag occurs exactly once now. Two tag strings never overlap (no "<" or ">" inside a tag),
    # so comparing start positions is enough: open1 < close1 < open2 < close2 < ...
    positions = [(text.find(f"<{tag}>"), text.find(f"</{tag}>")) for tag in spec.tags]
    previous_close = -1
    for open_at, close_at in positions:
        if open_at < previous_close or close_at < open_at:
            return fail("out_of_order")
        previous_close = close_at
    ordered = [text[open_at + len(tag) + 2 : close_at] for tag, (open_at, close_at) in zip(spec.tags, positions)]
    for tag, block in zip(spec.tags[:-1], ordered):
        if not block.strip():
            return fail(f"empty_block:{tag}")
    if copied and reject_copies:
        return fail(f"copied_block:{spec.tags[find_copy(ordered[:-1], copy_sources, copy_threshold)]}")
    if rating is None:
        return fail("unparsable_rating")
    if not scale.contains(rating):
        return fail("rating_out_of_scale")
    if not allow_trailing_text:
        tail_start = positions[-1][1] + len(spec.rating_tag) + 3
        if not _trailing_is_clean(text[tail_start:]):
            return fail("trailing_text")
    return FormatCheck(True, "ok", found, rating, total, copied)
