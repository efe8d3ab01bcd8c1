"""Samples -> prompt text and token ids, through a tokenizer's chat template.

`PromptRenderer` resolves a sample (interaction indices) into a `prompts.PromptInput`, renders it
through the chat template (system role where the template has one, merged into the user turn where
it has not) and fits it into the token budget. The template is rendered once around a sentinel and
reused as prefix + content + suffix, so a prompt costs one string join instead of a template render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reczero import prompts, rationales, rewards
from reczero.data.samples import SampleTable
from reczero.data.schema import SCALES, InteractionData, Item

_SENTINEL = "\u2063RECZERO_CONTENT\u2063"
_ANY_SCALE = SCALES["1-5"]
STYLES = ("full", "compact")


def item_details(item: Item, description_chars: int = 200) -> list[tuple[str, str]]:
    """The metadata lines a prompt shows for the target item."""
    details: list[tuple[str, str]] = []
    if item.genres:
        details.append(("Genres", ", ".join(item.genres)))
    if item.year:
        details.append(("Year", str(item.year)))
    if item.brand:
        details.append(("Brand", item.brand))
    if item.price:
        details.append(("Price", str(item.price)))
    desc = prompts.truncate(item.description, description_chars)
    if desc:
        details.append(("Description", desc))
    return details


def prompt_input(data: InteractionData, table: SampleTable, pos: int) -> prompts.PromptInput:
    """Resolve sample `pos` of `table` into the text fields a prompt shows."""
    rows = data.interactions
    target = rows[table.target[pos]]
    item = data.item(target.item)
    user_lines = []
    for j in table.user_history[pos]:
        it = data.item(rows[j].item)
        user_lines.append(
            prompts.HistoryLine(it.title, rows[j].rating, rows[j].review, ", ".join(it.genres[:3]) or None)
        )
    item_lines = [prompts.HistoryLine(item.title, rows[j].rating, rows[j].review) for j in table.item_history[pos]]
    return prompts.PromptInput(
        scale=data.scale,
        item_title=item.title,
        user_history=user_lines,
        item_history=item_lines,
        item_details=item_details(item),
        user_avg=table.user_avg[pos],
        user_count=table.user_count[pos],
        item_avg=table.item_avg[pos],
        item_count=table.item_count[pos],
        key=f"{target.user}|{target.item}|{target.timestamp}",
    )


@dataclass
class PromptConfig:
    """How a sample becomes a prompt: one object, handed to the DataModule (which renders the prompts)
    and to the LightningModule (which scores `response_prefix` + completion and checks that the prompt
    budget plus the completion fit the model's context). `reczero` commands link `data.prompt` to
    `model.init_args.prompt`, so a config states it once, under `data:`.

    Args:
        max_prompt_tokens: prompt budget; reviews are shortened first, then the oldest records dropped.
        review_chars: characters of each review shown before the budget shortens it.
        system_prompt: the system message (merged into the user turn for templates without one).
        response_prefix: text the assistant turn starts with (e.g. "<analyze user>"), part of the prompt;
            rewards and metrics score it together with the completion. Helps small models find the format.
        answer_example: add a one-shot worked answer (another user and item) after the skeleton; for
            small models that cannot follow the skeleton alone.
        template: the reward template whose tags the skeleton (and the example) asks for
            (`answers.TEMPLATES`: "four_step", or the ablations "think_answer" and "answer_only"); it
            must be `model.init_args.reward.template`, which scores the answers.
        style: "full" (the paper's prompt: history with reviews, averages, a hint per step) or
            "compact" (numbers first: counts and averages, short history lines, the count-shrunk
            user and item scores the match step adds, short hints; `prompts.compact_message`).
        user_shrink / item_shrink: the compact prompt's shrinkage of the user's and the item's
            average toward the typical rating (`prompts.scores`), in ratings.
        round_up_at: the compact rule's rounding (`rationales.compact_rationale`): a total
            is rounded up from this fraction of a step. Used by `coldstart --teacher template` and
            the `teacher_rule` baseline; the three constants are chosen on validation
            (benchmarks/tune_teacher.py).
    """

    max_prompt_tokens: int | None = 1024
    review_chars: int = 200
    system_prompt: str | None = prompts.SYSTEM_PROMPT
    response_prefix: str = ""
    answer_example: bool = False
    template: str = "four_step"
    style: str = "full"
    user_shrink: float = 5.0
    item_shrink: float = 5.0
    round_up_at: float = 0.5

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"prompt.style must be one of {STYLES}, got {self.style!r}")
        if self.user_shrink < 0 or self.item_shrink < 0:
            raise ValueError("prompt.user_shrink and prompt.item_shrink must be >= 0")
        if not 0.0 < self.round_up_at <= 1.0:
            raise ValueError(f"prompt.round_up_at must be in (0, 1], got {self.round_up_at}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 32:
            raise ValueError(f"prompt.max_prompt_tokens={self.max_prompt_tokens} is too small to hold any prompt")
        if self.review_chars < 0:
            raise ValueError(f"prompt.review_chars must be >= 0, got {self.review_chars}")
        tags = rewards.get_template(self.template).tags
        allowed = {f"<{t}>" for t in tags} | {f"</{t}>" for t in tags}
        foreign = [m for m in re.findall(r"</?[a-z][a-z ]*>", self.response_prefix) if m not in allowed]
        if foreign:  # every answer would fail the format (the default `<analyze user>` under an ablation)
            raise ValueError(
                f"prompt.response_prefix={self.response_prefix!r} writes {foreign}, tags the template "
                f"{self.template!r} does not have; set prompt.response_prefix to '' or to '<{tags[0]}>'"
            )

    def check_scored_by(self, reward) -> None:
        """Refuse a reward spec that scores another template than the one the prompt asks for."""
        if reward.template != self.template:
            raise ValueError(
                f"the prompt asks for the {self.template!r} template (data.prompt.template) but the reward "
                f"scores {reward.template!r} (reward.template): set both to the same template"
            )


@dataclass
class RenderStats:
    rendered: int = 0
    shortened: int = 0


class PromptRenderer:
    """Renders prompts for one tokenizer; counts how many had to be shortened."""

    def __init__(
        self,
        tokenizer,
        max_prompt_tokens: int | None = 1024,
        review_chars: int = 200,
        system_prompt: str | None = prompts.SYSTEM_PROMPT,
        response_prefix: str = "",
        answer_example: bool = False,
        typical_rating: float | None = None,
        example_genres: tuple[str, ...] = (),
        template: str = "four_step",
        style: str = "full",
        user_shrink: float = 5.0,
        item_shrink: float = 5.0,
        round_up_at: float = 0.5,
    ):
        self.tokenizer = tokenizer
        self.style = style
        self.user_shrink, self.item_shrink, self.round_up_at = user_shrink, item_shrink, round_up_at
        self.tags = rewards.get_template(template).tags  # the skeleton the prompt asks for
        self.response_prefix = response_prefix
        self.answer_example = answer_example
        self.typical_rating = typical_rating
        self.example_genres = example_genres
        self.max_prompt_tokens = max_prompt_tokens
        self.review_chars = review_chars
        self.system_prompt = system_prompt
        self.stats = RenderStats()
        self._prefix, self._suffix = self._split_template()

    def _chat(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _split_template(self) -> tuple[str, str] | tuple[None, None]:
        messages = prompts.build_messages(
            prompts.PromptInput(scale=_ANY_SCALE, item_title=""), system_prompt=self.system_prompt
        )
        messages[-1]["content"] = _SENTINEL
        self.system_merged = False
        try:
            text = self._chat(messages)
            if self.system_prompt and self.system_prompt not in text:
                raise ValueError("template dropped the system prompt")
        except Exception:  # templates without a system role raise or drop it: merge into the user turn
            self.system_merged = True
            messages = prompts.merge_system(messages)
            text = self._chat(messages)
        if text.count(_SENTINEL) != 1:
            return None, None
        prefix, suffix = text.split(_SENTINEL)
        return prefix, suffix

    def example_for(self, inp: prompts.PromptInput) -> str | None:
        """The one-shot example this prompt shows (None without `answer_example`): made-up facts seeded
        by the sample key, reasoned by the rule teacher around the typical rating."""
        if not self.answer_example:
            return None
        scale = inp.scale
        typical = self.typical(scale)
        if self.style == "compact":
            made_up = rationales.example_input(inp.key, scale, typical, self.example_genres, inp)
            answer = rationales.compact_rationale(made_up, self.scores(made_up), self.round_up_at)[0]
        else:
            answer = rationales.example_answer(inp.key, scale, typical, self.example_genres, inp)
        return prompts.in_template(answer, self.tags)

    def typical(self, scale) -> float:
        """The typical rating: the train split's mean, else a point 5/8 up the scale."""
        return self.typical_rating if self.typical_rating is not None else scale.low + 0.625 * scale.span

    def scores(self, inp: prompts.PromptInput) -> prompts.Scores:
        """The count-shrunk scores a compact prompt states for `inp`."""
        return prompts.scores(inp, self.typical(inp.scale), self.user_shrink, self.item_shrink)

    def copy_sources(self, inp: prompts.PromptInput) -> tuple[str, ...]:
        """What an answer to `inp`'s prompt must not copy: the skeleton's hints and the example's blocks."""
        example = self.example_for(inp)
        if self.style == "compact":
            return prompts.compact_copy_sources(inp.scale, self.tags, example)
        return prompts.copy_sources(inp.scale, example, self.tags)

    def render_text(self, inp: prompts.PromptInput, review_chars: int) -> str:
        example = self.example_for(inp)
        if self.style == "compact":
            content = prompts.compact_message(inp, self.scores(inp), self.tags, review_chars)
            if example:
                content += "\n\nExample of a complete answer, about a different user and item:\n" + example
        else:
            content = prompts.user_message(inp, review_chars, example, self.tags)
        if self._prefix is not None:  # a merged system prompt is already inside the prefix
            return self._prefix + content + self._suffix + self.response_prefix
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": content})
        text = self._chat(prompts.merge_system(messages) if self.system_merged else messages)
        return text + self.response_prefix

    def count_tokens(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: list[str]) -> list[int]:
        """Token counts; through the Rust tokenizer directly when there is one (no Python-side batch encoding)."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        fast = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        if fast is not None:
            return [len(e.ids) for e in fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def render(self, inp: prompts.PromptInput) -> prompts.FittedPrompt:
        fitted = prompts.fit_prompt(
            inp, self.render_text, self.count_tokens, self.max_prompt_tokens, self.review_chars
        )
        self.stats.rendered += 1
        self.stats.shortened += int(fitted.shortened)
        return fitted

    def render_many(self, inputs: list[prompts.PromptInput]) -> list[prompts.FittedPrompt]:
        """Batch version: one batched tokenizer call for the common case that fits."""
        texts = [self.render_text(inp, self.review_chars) for inp in inputs]
        lengths = self.count_many(texts)
        out = []
        for inp, text, n in zip(inputs, texts, lengths):
            if self.max_prompt_tokens is None or n <= self.max_prompt_tokens:
                out.append(prompts.FittedPrompt(text, n, False, self.review_chars, 0))
                self.stats.rendered += 1
            else:
                out.append(self.render(inp))
        return out
