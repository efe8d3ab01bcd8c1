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
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from reczero import prompts
from reczero.data.cache import load_or_build
from reczero.data.render import PromptRenderer, prompt_input
from reczero.data.samples import SampleConfig, SampleTable, split_counts
from reczero.data.schema import InteractionData
from reczero.data.sources import SourceConfig

log = logging.getLogger(__name__)


def fallback_rating(table: SampleTable, pos: int, data: InteractionData) -> float:
    """What an unparsable answer is scored as: the user's earlier average, else the item's, else the
    scale's midpoint; clipped to the scale. Never the truth."""
    scale = data.scale
    for avg in (table.user_avg[pos], table.item_avg[pos]):
        if avg is not None:
            return scale.clip(avg)
    return (scale.low + scale.high) / 2


class PromptDataset(Dataset):
    """Samples of one split, rendered to token ids on access."""

    def __init__(self, data: InteractionData, table: SampleTable, positions: list[int], renderer: PromptRenderer):
        self.data, self.table, self.positions, self.renderer = data, table, positions, renderer

    def __len__(self) -> int:
        return len(self.positions)

    def prompt_text(self, index: int) -> str:
        return self.renderer.render(prompt_input(self.data, self.table, self.positions[index])).text

    def __getitem__(self, index: int) -> dict:
        pos = self.positions[index]
        fitted = self.renderer.render(prompt_input(self.data, self.table, pos))
        ids = self.renderer.tokenizer(fitted.text, add_special_tokens=False)["input_ids"]
        return {
            "sample_id": pos,
            "input_ids": ids,
            "target": self.data.interactions[self.table.target[pos]].rating,
            "fallback": fallback_rating(self.table, pos, self.data),
            "history_len": len(self.table.user_history[pos]) + len(self.table.item_history[pos]),
        }


class PromptCollator:
    """Left-pads prompts (generation appends on the right)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)  # [B, P]
        mask = torch.zeros((len(features), width), dtype=torch.long)  # [B, P]
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, width - n :] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[row, width - n :] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "target": torch.tensor([f["target"] for f in features], dtype=torch.float32),
            "fallback": torch.tensor([f["fallback"] for f in features], dtype=torch.float32),
            "sample_id": torch.tensor([f["sample_id"] for f in features], dtype=torch.long),
            "history_len": torch.tensor([f["history_len"] for f in features], dtype=torch.long),
        }


def sft_collate(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion; `labels` are -100 on prompt and padding (completion-only loss)."""
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros_like(ids)  # [B, L]
    labels = torch.full_like(ids, -100)  # [B, L]
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        seq = torch.tensor(p + c, dtype=torch.long)
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, len(p) : len(seq)] = seq[len(p) :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ResumableSampler(DistributedSampler):
    """A seeded, per-epoch shuffled sampler that can start mid-epoch.

    It is a `DistributedSampler` (Lightning leaves those in place under DDP), so each rank sees its
    own shard. `skip` samples of the current epoch are passed over once, after a resume.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(_Sized(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        return self.num_samples


class _Sized:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class SFTDataset(Dataset):
    """Prompt + completion token ids of the samples that have a completion, tokenised once up front
    (the lengths are needed for bucketing anyway). The completion loses the `response_prefix` the
    prompt already ends with, and gains the EOS token, so the model learns to stop after `</rate>`."""

    def __init__(self, prompts_ds: PromptDataset, completions: list[str], response_prefix: str, eos_id: int | None):
        tok = prompts_ds.renderer.tokenizer
        self.items: list[tuple[int, list[int], list[int]]] = []
        for index, text in enumerate(completions):
            text = text.strip()
            if response_prefix:
                if not text.startswith(response_prefix.strip()):
                    pos = prompts_ds.positions[index]
                    raise ValueError(f"completion of sample {pos} does not start with data.response_prefix")
                text = text[len(response_prefix.strip()) :]
            ids = tok(text, add_special_tokens=False)["input_ids"] + ([eos_id] if eos_id is not None else [])
            self.items.append((prompts_ds.positions[index], prompts_ds[index]["input_ids"], ids))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, list[int], list[int]]:
        return self.items[index]

    def lengths(self) -> list[int]:
        return [len(p) + len(c) for _, p, c in self.items]


def _sft_collate(features: list[tuple[int, list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = sft_collate([f[1] for f in features], [f[2] for f in features], pad_id)
    batch["sample_id"] = torch.tensor([f[0] for f in features], dtype=torch.long)  # [B]
    return batch


def bucket_order(indices: list[int], lengths: list[int], batch_size: int, chunk: int, seed: int) -> list[int]:
    """`indices` (already shuffled) regrouped so that consecutive runs of `batch_size` have similar lengths.

    Each chunk of `chunk` indices (a multiple of `batch_size`) is sorted longest first and cut into
    batches; the batches of a chunk are then shuffled (seeded) so long and short steps alternate.
    Less padding per batch, while the data order stays random at the chunk scale.
    """
    rng, out = random.Random(seed), []
    for start in range(0, len(indices), chunk):
        part = sorted(indices[start : start + chunk], key=lambda i: -lengths[i])
        batches = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        full = [b for b in batches if len(b) == batch_size]
        rng.shuffle(full)
        out.extend(i for b in full + [b for b in batches if len(b) < batch_size] for i in b)
    return out


class BucketedSampler(ResumableSampler):
    """`ResumableSampler` whose per-epoch order is length-bucketed (`bucket_order`); `skip` still counts
    samples of that order, so a resumed run continues with the next unseen batch."""

    def __init__(self, lengths: list[int], batch_size: int, chunk_batches: int = 16, **kwargs):
        super().__init__(len(lengths), **kwargs)
        self.lengths, self.batch_size, self.chunk = lengths, batch_size, batch_size * chunk_batches

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        order = bucket_order(
            list(super().__iter__()), self.lengths, self.batch_size, self.chunk, self.seed + self.epoch
        )
        return iter(order[skip:])


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
            )
        return self._renderer

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
