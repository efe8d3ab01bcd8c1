"""The torch pieces the DataModule's loaders are built from: datasets, collators and resumable samplers.

- `PromptDataset` renders a split's samples to token ids on access; `PromptCollator` left-pads them
  (`left_pad`, the one left-padding every prompt batch goes through: generation appends on the right)
  into prompt batches; `fallback_rating` is what an unparsable answer is scored as.
- `SFTDataset` / `sft_collate`: prompt + completion, right-padded, labels -100 on the prompt.
- `ResumableSampler` (a `DistributedSampler` that can start mid-epoch) and `BucketedSampler` (its
  length-bucketed order, `bucket_order`) make a resumed run continue with the next unseen sample.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from reczero import reasoning
from reczero.data.render import PromptRenderer, prompt_input
from reczero.data.samples import SampleTable
from reczero.data.schema import InteractionData
from reczero.scale import RatingScale


def fallback_rating(scale: RatingScale, user_avg: float | None, item_avg: float | None) -> float:
    """What an unparsable answer is scored as: the user's earlier average, else the item's, else the
    scale's midpoint; clipped to the scale. Never the truth."""
    for avg in (user_avg, item_avg):
        if avg is not None:
            return scale.clip(avg)
    return (scale.low + scale.high) / 2


def pad_id(tokenizer) -> int:
    """The id prompts are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (`input_ids [B, P]`, `attention_mask [B, P]`), padded on the left to the longest."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)  # [B, P]
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # [B, P]
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


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
        inp = prompt_input(self.data, self.table, pos)
        fitted = self.renderer.render(inp)
        ids = self.renderer.tokenizer(fitted.text, add_special_tokens=False)["input_ids"]
        return {
            "sample_id": pos,
            "input_ids": ids,
            "target": self.data.interactions[self.table.target[pos]].rating,
            "fallback": fallback_rating(self.data.scale, self.table.user_avg[pos], self.table.item_avg[pos]),
            "history_len": len(self.table.user_history[pos]) + len(self.table.item_history[pos]),
            "copy_sources": self.renderer.copy_sources(inp),
            "facts": reasoning.prompt_facts(inp),
        }


class PromptCollator:
    """Left-pads prompts (generation appends on the right). The texts each answer must not copy
    (`copy_sources`) and the facts it may name (`facts`) ride along as lists, one per prompt, and the
    rating scale of the targets as `(low, high, step)` (`scale_of` reads it back; a plain tuple, since
    Lightning rebuilds the dataclasses in a batch and the scale is frozen), so whoever scores the batch
    needs nothing else.
    Requests (`reczero predict`) have no `target`, `sample_id` or `history_len`: those are then None."""

    def __init__(self, pad_id: int, scale: RatingScale | None = None):
        self.pad_id, self.scale = pad_id, scale

    def __call__(self, features: list[dict]) -> dict:
        ids, mask = left_pad([f["input_ids"] for f in features], self.pad_id)  # [B, P] each

        def column(key: str, dtype: torch.dtype) -> torch.Tensor | None:  # [B], or None when a feature lacks it
            values = [f.get(key) for f in features]
            return None if any(v is None for v in values) else torch.tensor(values, dtype=dtype)

        return {
            "scale": None if self.scale is None else (self.scale.low, self.scale.high, self.scale.step),
            "input_ids": ids,
            "attention_mask": mask,
            "target": column("target", torch.float32),
            "fallback": column("fallback", torch.float32),
            "sample_id": column("sample_id", torch.long),
            "history_len": column("history_len", torch.long),
            "copy_sources": [f.get("copy_sources", ()) for f in features],
            "facts": [f.get("facts", reasoning.PromptFacts()) for f in features],
        }


def scale_of(batch: dict) -> RatingScale:
    """The rating scale a `PromptCollator` batch's targets are on."""
    if batch.get("scale") is None:
        raise ValueError("this batch carries no rating scale: build it with PromptCollator(pad_id, scale)")
    return RatingScale(*batch["scale"])


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
                    raise ValueError(f"completion of sample {pos} does not start with data.prompt.response_prefix")
                text = text[len(response_prefix.strip()) :]
            ids = tok(text, add_special_tokens=False)["input_ids"] + ([eos_id] if eos_id is not None else [])
            self.items.append((prompts_ds.positions[index], prompts_ds[index]["input_ids"], ids))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, list[int], list[int]]:
        return self.items[index]

    def lengths(self) -> list[int]:
        return [len(p) + len(c) for _, p, c in self.items]


def sft_batch(features: list[tuple[int, list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """`SFTDataset` items -> an SFT batch (`sft_collate`) with their `sample_id [B]`."""
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
