"""`RatingDataModule`: interaction histories in, tokenised reasoning prompts out.

It reads a source (or the synthetic default), builds chronological samples once (cached as Arrow),
and serves, per split:
  - prompt batches for GRPO, evaluation and prediction (left-padded, since they are generated from):
    `input_ids [B, P]`, `attention_mask [B, P]`, `target [B]`, `fallback [B]`, `sample_id [B]`,
    `history_len [B]`;
  - SFT batches (`sft_dataloader`): prompt + completion, right-padded, labels -100 on the prompt,
    length-bucketed; `train_dataloader` serves them once the SFT module sets `sft_completions`.
The tokenizer arrives late (`set_tokenizer`): the policy owns it. The train sampler is resumable
(`state_dict`), so a run resumed from a mid-epoch checkpoint continues with the next unseen sample.
The datasets, collators and samplers it builds its loaders from are in `batching`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import lightning as L
from torch.utils.data import DataLoader

from reczero import prompts
from reczero.data.batching import (
    BucketedSampler,
    PromptCollator,
    PromptDataset,
    ResumableSampler,
    SFTDataset,
    _sft_collate,
)
from reczero.data.cache import load_or_build
from reczero.data.render import PromptRenderer
from reczero.data.samples import SampleConfig, SampleTable, split_counts
from reczero.data.schema import InteractionData
from reczero.data.sources import SourceConfig

log = logging.getLogger(__name__)


class RatingDataModule(L.LightningDataModule):
    """Interactions -> chronological samples -> Think-before-Recommendation prompt batches.

    Args:
        source: where interactions come from (format, path, scale, bad-row policy).
        samples: history sizes, minimum history, split, caps for quick runs.
        max_prompt_tokens: prompt budget; reviews are shortened first, then the oldest records dropped.
        review_chars: characters of each review shown before the budget shortens it.
        system_prompt: the system message (merged into the user turn for templates without one).
        response_prefix: text the assistant turn starts with (e.g. "<analyze user>"), part of the prompt;
            rewards and metrics score it together with the completion. Helps small models find the format.
        answer_example: add a one-shot worked answer (another user and item) after the skeleton; for
            small models that cannot follow the skeleton alone.
        batch_size: prompts per training step (GRPO samples `group_size` completions of each).
        eval_batch_size: prompts per validation/test/predict batch.
        num_workers: DataLoader worker processes.
        cache_dir: sample cache folder (default `$RECZERO_CACHE/samples` or `~/.cache/reczero/samples`).
        use_cache: read and write the cache.
        seed: train shuffling seed.
    """

    def __init__(
        self,
        source: SourceConfig = SourceConfig(),
        samples: SampleConfig = SampleConfig(),
        max_prompt_tokens: int | None = 1024,
        review_chars: int = 200,
        system_prompt: str | None = prompts.SYSTEM_PROMPT,
        response_prefix: str = "",
        answer_example: bool = False,
        batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        cache_dir: str | None = None,
        use_cache: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("data.batch_size and data.eval_batch_size must be >= 1")
        if max_prompt_tokens is not None and max_prompt_tokens < 32:
            raise ValueError(f"data.max_prompt_tokens={max_prompt_tokens} is too small to hold any prompt")
        self.source = dataclasses.replace(source)
        self.sample_config = dataclasses.replace(samples)
        self.max_prompt_tokens = max_prompt_tokens
        self.review_chars = review_chars
        self.system_prompt = system_prompt
        self.response_prefix = response_prefix
        self.answer_example = answer_example
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.seed = seed
        self.tokenizer = None
        self.data: InteractionData | None = None
        self.table: SampleTable | None = None
        self._renderer: PromptRenderer | None = None
        self._train_sampler: ResumableSampler | None = None
        self._resume_state: dict | None = None
        self.sft_completions: dict[int, str] | None = None  # set by SFTModule: train on these instead

    # -- building -------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer) -> None:
        """The policy's tokenizer; called by the LightningModule before any dataloader is built."""
        self.tokenizer = tokenizer
        self._renderer = None

    def prepare_data(self) -> None:
        if self.use_cache:  # build the cache once, on one process
            load_or_build(self.source, self.sample_config, self.cache_dir, self.use_cache)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        self.data, self.table, hit = load_or_build(self.source, self.sample_config, self.cache_dir, self.use_cache)
        counts = split_counts(self.table)
        log.info("samples %s (%s, cache %s)", counts, self.data.name, "hit" if hit else "miss")
        for split, n in counts.items():
            if n == 0:
                raise ValueError(
                    f"no {split} samples from {self.data.name}: {len(self.data.interactions)} interactions, "
                    f"{self.table.dropped_short} dropped by samples.min_history={self.sample_config.min_history}"
                    + (
                        f", samples.max_samples={self.sample_config.max_samples}"
                        if self.sample_config.max_samples
                        else ""
                    )
                )

    @property
    def scale(self):
        if self.data is None:
            self.setup()
        return self.data.scale

    @property
    def renderer(self) -> PromptRenderer:
        if self.tokenizer is None:
            raise RuntimeError("RatingDataModule needs the policy's tokenizer: call set_tokenizer() first")
        if self._renderer is None:
            self._renderer = PromptRenderer(
                self.tokenizer,
                self.max_prompt_tokens,
                self.review_chars,
                self.system_prompt,
                self.response_prefix,
                self.answer_example,
                self.typical_rating,
                self.example_genres,
            )
        return self._renderer

    @functools.cached_property
    def typical_rating(self) -> float:
        """The mean rating of the train split's targets: the rule-based rationale's anchor (`prompts.rationale`)."""
        if self.table is None:
            self.setup()
        rows, ratings = self.data.interactions, []
        for pos, split in enumerate(self.table.split):
            if split == "train":
                ratings.append(rows[self.table.target[pos]].rating)
        if not ratings:
            raise ValueError(f"no train samples in {self.data.name} to take a typical rating from")
        return sum(ratings) / len(ratings)

    @functools.cached_property
    def example_genres(self) -> tuple[str, ...]:
        """The data's most common item genres / categories: what the one-shot examples' made-up items are."""
        if self.data is None:
            self.setup()
        counts: dict[str, int] = {}
        for item in self.data.items.values():
            for genre in item.genres:
                counts[genre] = counts.get(genre, 0) + 1
        return tuple(sorted(counts, key=lambda g: (-counts[g], g))[:12])

    def positions(self, split: str) -> list[int]:
        if self.table is None:
            self.setup()
        return [p for p, s in enumerate(self.table.split) if s == split]

    def dataset(self, split: str) -> PromptDataset:
        if self.table is None:
            self.setup()
        return PromptDataset(self.data, self.table, self.positions(split), self.renderer)

    def sample_key(self, pos: int) -> str:
        row = self.data.interactions[self.table.target[pos]]
        return f"{row.user}|{row.item}|{row.timestamp}"

    # -- loaders --------------------------------------------------------------------------------
    def _collate(self) -> PromptCollator:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return PromptCollator(pad)

    def _make_train_sampler(
        self, size: int, lengths: list[int] | None = None, batch_size: int = 1
    ) -> ResumableSampler:
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        kwargs = dict(num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        sampler = (
            ResumableSampler(size, **kwargs) if lengths is None else BucketedSampler(lengths, batch_size, **kwargs)
        )
        if self._resume_state is not None:
            sampler.set_epoch(self._resume_state["epoch"])
            sampler.skip = self._resume_state["consumed"]
            self._resume_state = None
        self._train_sampler = sampler
        return sampler

    def train_dataloader(self) -> DataLoader:
        if self.sft_completions is not None:
            return self.sft_dataloader(self.sft_completions, self.batch_size)
        ds = self.dataset("train")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=self._make_train_sampler(len(ds)),
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
        )

    def sft_dataloader(
        self, completions: dict[int, str], batch_size: int, bucket: bool = True, shuffle: bool = True
    ) -> DataLoader:
        """SFT batches of the samples in `completions` (sample position -> four-tag completion text).

        Batches: `input_ids [B, L]`, `attention_mask [B, L]`, `labels [B, L]` (-100 on prompt and
        padding; `sft_collate`), `sample_id [B]`. `shuffle=True` is the training loader: the resumable
        train sampler (length-bucketed when `bucket`; resume state and DDP sharding as for GRPO; the
        resume position counts `data.batch_size` per step, so pass that). `shuffle=False`: position
        order, every sample once (held-out losses).
        """
        if self.table is None:
            self.setup()
        positions = sorted(completions)
        prompts_ds = PromptDataset(self.data, self.table, positions, self.renderer)
        ds = SFTDataset(
            prompts_ds, [completions[p] for p in positions], self.response_prefix, self.tokenizer.eos_token_id
        )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        collate = functools.partial(_sft_collate, pad_id=pad)
        if not shuffle:
            return DataLoader(
                ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=self.num_workers
            )
        sampler = self._make_train_sampler(len(ds), ds.lengths() if bucket else None, batch_size)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            drop_last=True,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # -- exact resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The train position: epoch and prompts consumed in it on this rank."""
        if self.trainer is None:
            return {}
        # saved from on_train_batch_end: the batch being finished is "processed", not yet "completed"
        consumed_batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "consumed": consumed_batches * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_state = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}


def steps_per_epoch(num_train: int, batch_size: int, world_size: int = 1) -> int:
    return math.ceil(num_train / world_size) // batch_size
