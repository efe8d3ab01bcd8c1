"""Is the reasoning about THIS prompt? Copy detection (a format rule) and grounding (a measure).

A small policy learns quickly that the cheapest well-formatted answer is a copy: of the skeleton's
hints ("what this user tends to like...") or of the prompt's one-shot example. The paper's format
rule (non-empty blocks) passes those. Two pure checks close the gap:

* `find_copy`: a reasoning block is a copy of a reference text when their word sequences are equal
  after lower-casing and dropping punctuation and spacing (exact and case/space-changed copies), or
  when their `difflib` similarity ratio reaches `threshold` (near-copies: a word or number changed).
  `rewards.check_format` fails such a completion (`copied_block:<tag>`).
* `grounding`: whether the user analysis names something of this prompt's user history (a title,
  a genre, the user's average) and the item analysis something of the target item (its title, a
  genre, its average). A measure for logs and reports, not part of the reward.

Pure standard library + `reczero.prompts`; linear in the completion length (a block too long to be a
near-copy of a reference is never compared with it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from reczero.prompts import GENRE_KEYS, PromptInput, split_genres

COPY_THRESHOLD = 0.8
# A word is a run of letters/digits, with a decimal part kept whole ("3.96"), so numbers compare as numbers.
_WORD = re.compile(r"[0-9]+(?:\.[0-9]+)?|[^\W_]+", re.UNICODE)
_YEAR = re.compile(r"\s*\((?:[0-9]{4}|[0-9]{4}-[0-9]{4})\)\s*$")
_ARTICLE = re.compile(r",\s*(the|a|an|la|le|les|il|el|das|der|die)$", re.IGNORECASE)


def words(text: str) -> list[str]:
    """Lower-cased words and numbers of `text`, punctuation and spacing dropped."""
    return _WORD.findall(text.lower())


def is_copy(block: str, reference: str, threshold: float = COPY_THRESHOLD) -> bool:
    """`block` repeats `reference`: equal words, or a word-sequence similarity of at least `threshold`."""
    a, b = words(block), words(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    # ratio = 2M / (|a| + |b|) <= 2 min / (|a| + |b|): lengths this far apart can never reach the threshold
    if 2 * min(len(a), len(b)) < threshold * (len(a) + len(b)):
        return False
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


def find_copy(blocks: Sequence[str], references: Iterable[str], threshold: float = COPY_THRESHOLD) -> int | None:
    """Index of the first block that copies any reference text, or None."""
    references = [r for r in references if r and r.strip()]
    for index, block in enumerate(blocks):
        if any(is_copy(block, ref, threshold) for ref in references):
            return index
    return None


@dataclass  # not frozen: Lightning rebuilds dataclasses inside a batch when it moves the batch to a device
class PromptFacts:
    """What a grounded analysis may name, lower-cased.

    user_phrases / item_phrases: titles (without the year or a trailing article) and genres, matched
    as whole words. user_numbers / item_numbers: the average as the prompt writes it ("3.96") and to
    one decimal ("4.0", and the truncated "3.9"), matched as whole numbers.
    """

    user_phrases: tuple[str, ...] = ()
    user_numbers: tuple[str, ...] = ()
    item_phrases: tuple[str, ...] = ()
    item_numbers: tuple[str, ...] = ()


def _title_core(title: str) -> str:
    core = _YEAR.sub("", title.strip())
    return _ARTICLE.sub("", core).strip().lower()


def _average_forms(avg: float | None, count: int) -> tuple[str, ...]:
    if avg is None or not count:
        return ()
    truncated = int(avg * 10) / 10
    return tuple(dict.fromkeys((f"{avg:.2f}", f"{avg:.1f}", f"{truncated:.1f}")))


def prompt_facts(inp: PromptInput) -> PromptFacts:
    """The facts `inp`'s prompt shows about the user and about the target item."""
    user = [_title_core(line.title) for line in inp.user_history]
    user += [g.lower() for line in inp.user_history for g in split_genres(line.details)]
    item = [_title_core(inp.item_title)]
    item += [g.lower() for key, value in inp.item_details if key in GENRE_KEYS for g in split_genres(value)]
    keep = lambda phrases: tuple(dict.fromkeys(p for p in phrases if len(p) >= 3))  # noqa: E731
    return PromptFacts(
        user_phrases=keep(user),
        user_numbers=_average_forms(inp.user_avg, inp.user_count),
        item_phrases=keep(item),
        item_numbers=_average_forms(inp.item_avg, inp.item_count),
    )


def _names_any(text: str, phrases: Iterable[str], numbers: Iterable[str]) -> bool:
    low = text.lower()
    for phrase in phrases:
        start = low.find(phrase)
        while start >= 0:
            end = start + len(phrase)
            before = low[start - 1] if start else " "
            after = low[end] if end < len(low) else " "
            if not before.isalnum() and not after.isalnum():
                return True
            start = low.find(phrase, start + 1)
    present = set(_WORD.findall(low))
    return any(n in present for n in numbers)


@dataclass(frozen=True)
class Grounding:
    """Whether the user block names a user fact and the item block an item fact."""

    user: bool
    item: bool

    @property
    def both(self) -> bool:
        return self.user and self.item


def grounding(user_block: str | None, item_block: str | None, facts: PromptFacts) -> Grounding:
    """`Grounding` of an answer's user and item analyses (None: the block is missing)."""
    user = user_block is not None and _names_any(user_block, facts.user_phrases, facts.user_numbers)
    item = item_block is not None and _names_any(item_block, facts.item_phrases, facts.item_numbers)
    return Grounding(user, item)
