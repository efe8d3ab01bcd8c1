"""`RatingDataModule`: interaction histories in, tokenised reasoning prompts out.

It reads a source (or the synthetic default), builds chronological samples once (cached as Arrow),
and serves, per split:
  - prompt batches for GRPO, evaluation and prediction (left-padded, since they are generated from):
    `input_ids [B, P]`, `attention_mask [B, P]`, `target [B]`, `fallback [B]`, `sample_id [B]`,
    `history_len [B]`, and per prompt `copy_sources`, `facts` and the rating `scale` of the targets;
  - with `traces` (RecOne's SFT), SFT batches instead: prompt + completion, right-padded, labels -100
    on the prompt, length-bucketed; `traces` held out by `heldout_traces` become a second validation
    loader (`val/trace_loss`).
It takes its settings from its own arguments only: the prompt settings it shares with the
LightningModule arrive as one `PromptConfig` (`prompt`), and the tokenizer is loaded from `tokenizer`
(the policy's model; the commands link them) or handed over with `set_tokenizer`. The train sampler is
resumable (`state_dict`), so a run resumed from a mid-epoch checkpoint continues with the next unseen
sample. The datasets, collators and samplers it builds its loaders from are in `batching`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random

import lightning as L
from torch.utils.data import DataLoader

from reczero.data.batching import (
    BucketedSampler,
    PromptCollator,
    PromptDataset,
    ResumableSampler,
    SFTDataset,
    pad_id,
    sft_batch,
)
from reczero.data.cache import load_or_build
from reczero.data.render import PromptConfig, PromptRenderer
from reczero.data.samples import SampleConfig, SampleTable, split_counts
from reczero.data.schema import InteractionData
from reczero.data.sources import SourceConfig
from reczero.data.traces import ON_BAD, load_traces, match_traces

log = logging.getLogger(__name__)


class RatingDataModule(L.LightningDataModule):
    """Interactions -> chronological samples -> Think-before-Recommendation prompt batches.

    Args:
        source: where interactions come from (format, path, scale, bad-row policy).
        samples: history sizes, minimum history, split, caps for quick runs.
        prompt: how a sample becomes a prompt (budget, review length, system prompt, response prefix,
            one-shot example); the LightningModule gets the same object.
        tokenizer: the model (hub id, folder or `bundled:...`) whose tokenizer and chat template render
            the prompts: the policy's (`reczero` commands link it to `model.init_args.policy.model`).
            None: a tokenizer must be handed over with `set_tokenizer`.
        traces: RecOne's SFT traces (JSONL, `reczero.data.traces`), matched to train samples: train
            batches are then prompt + trace completion (SFT) instead of prompts (GRPO).
        on_bad_trace: "error" stops at the first invalid or unmatched trace (naming file, line and
            reason); "skip" drops and counts them.
        heldout_traces: traces kept out of training (drawn with `seed`) for a second validation loader.
        bucket: length-bucketed SFT batches (less padding); off = plain shuffled batches.
        batch_size: prompts (or traces) per training step (GRPO samples `group_size` completions of each).
        eval_batch_size: prompts per validation/test/predict batch.
        num_workers: DataLoader worker processes.
        cache_dir: sample cache folder (default `$RECZERO_CACHE/samples` or `~/.cache/reczero/samples`).
        use_cache: read and write the cache.
        seed: train shuffling seed, and the held-out traces' draw.
    """

    def __init__(
        self,
        source: SourceConfig = SourceConfig(),
        samples: SampleConfig = SampleConfig(),
        prompt: PromptConfig = PromptConfig(),
        tokenizer: str | None = None,
        traces: str | None = None,
        on_bad_trace: str = "error",
        heldout_traces: int = 0,
        bucket: bool = True,
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
        if on_bad_trace not in ON_BAD:
            raise ValueError(f"data.on_bad_trace must be one of {ON_BAD}, got {on_bad_trace!r}")
        if heldout_traces < 0:
            raise ValueError(f"data.heldout_traces must be >= 0, got {heldout_traces}")
        self.source = dataclasses.replace(source)
        self.sample_config = dataclasses.replace(samples)
        self.prompt = dataclasses.replace(prompt)
        self.tokenizer_name = tokenizer
        self.traces = traces
        self.on_bad_trace = on_bad_trace
        self.heldout_traces = heldout_traces
        self.bucket = bucket
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.seed = seed
        self._tokenizer = None
        self.data: InteractionData | None = None
        self.table: SampleTable | None = None
        self._renderer: PromptRenderer | None = None
        self._train_sampler: ResumableSampler | None = None
        self._resume_state: dict | None = None
        self._completions: tuple[dict[int, str], dict[int, str]] | None = None
        self._positions: dict[str, list[int]] | None = None

    # -- building -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer that renders prompts: the one handed over, else loaded from `tokenizer`."""
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise RuntimeError(
                    "RatingDataModule needs a tokenizer: pass data.tokenizer (the policy's model) or call set_tokenizer()"
                )
            from reczero.policy.factory import PolicyConfig, load_tokenizer  # transformers: only when rendering

            self._tokenizer = load_tokenizer(PolicyConfig(model=self.tokenizer_name))
        return self._tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Use this tokenizer object (a command that already loaded the model's) instead of loading one."""
        self._tokenizer = tokenizer
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
        if self._renderer is None:
            self._renderer = PromptRenderer(
                self.tokenizer,
                **dataclasses.asdict(self.prompt),
                typical_rating=self.typical_rating,
                example_genres=self.example_genres,
            )
        return self._renderer

    @functools.cached_property
    def typical_rating(self) -> float:
        """The mean rating of the train split's targets: the rule-based rationale's anchor (`rationales.rationale`)."""
        if self.table is None:
            self.setup()
        rows = self.data.interactions
        ratings = [rows[self.table.target[pos]].rating for pos in self.positions("train")]
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
        """The sample positions of `split`, in table order (read once from the table)."""
        if self.table is None:
            self.setup()
        if self._positions is None:
            self._positions = {name: [] for name in ("train", "validation", "test")}
            for pos, name in enumerate(self.table.split):
                self._positions[name].append(pos)
        return self._positions[split]

    def dataset(self, split: str) -> PromptDataset:
        if self.table is None:
            self.setup()
        return PromptDataset(self.data, self.table, self.positions(split), self.renderer)

    def sample_key(self, pos: int) -> str:
        row = self.data.interactions[self.table.target[pos]]
        return f"{row.user}|{row.item}|{row.timestamp}"

    # -- traces (RecOne's SFT) ----------------------------------------------------------------------
    def trace_completions(self) -> tuple[dict[int, str], dict[int, str]]:
        """(train, held out): sample position -> trace completion, from `traces` matched to train samples."""
        if self._completions is None:
            if self.traces is None:
                raise RuntimeError("no SFT traces: set data.traces")
            if self.table is None:
                self.setup()
            traces, bad = load_traces(self.traces, self.scale, self.on_bad_trace)
            completions, unmatched = match_traces(traces, self, self.on_bad_trace)
            if bad or unmatched:
                log.warning("skipped %d invalid and %d unmatched traces of %s", bad, unmatched, self.traces)
            if len(completions) <= self.heldout_traces:
                raise ValueError(
                    f"{len(completions)} usable traces in {self.traces}, not enough to hold out {self.heldout_traces}"
                )
            held = set(random.Random(self.seed).sample(sorted(completions), self.heldout_traces))
            train = {p: c for p, c in completions.items() if p not in held}
            self._completions = train, {p: c for p, c in completions.items() if p in held}
            log.info("SFT on %d traces (%d held out) from %s", len(train), len(held), self.traces)
        return self._completions

    # -- loaders --------------------------------------------------------------------------------
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
        if self.traces is not None:
            return self.sft_dataloader(self.trace_completions()[0], self.batch_size, self.bucket)
        ds = self.dataset("train")
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=self._make_train_sampler(len(ds)),
            collate_fn=PromptCollator(pad_id(self.tokenizer), self.scale),
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
            prompts_ds, [completions[p] for p in positions], self.prompt.response_prefix, self.tokenizer.eos_token_id
        )
        collate = functools.partial(sft_batch, pad_id=pad_id(self.tokenizer))
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
            collate_fn=PromptCollator(pad_id(self.tokenizer), self.scale),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation prompts; with held-out traces, a second loader of their SFT batches."""
        prompts = self._eval_loader("validation")
        if self.traces is None or not self.heldout_traces:
            return prompts
        return [prompts, self.sft_dataloader(self.trace_completions()[1], self.eval_batch_size, shuffle=False)]

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
