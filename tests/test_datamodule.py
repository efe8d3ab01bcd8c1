"""Prompt rendering, the RatingDataModule's batches, the resumable sampler and the sample cache.

Everything runs on the tiny in-process tokenizers (`tests/tiny.py`) and a small synthetic source
(30 users x ~8 ratings) or a generic CSV written into tmp_path; caches go to tmp folders only.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest
import torch
from tiny import make_tiny_tokenizer

from reczero import prompts
from reczero.data.batching import ResumableSampler, fallback_rating, scale_of, sft_collate
from reczero.data.cache import ArrowColumn, ArrowRows, load_or_build
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig, PromptRenderer, prompt_input
from reczero.data.samples import SampleConfig, SampleTable, split_counts
from reczero.data.schema import SCALES, InteractionData
from reczero.data.sources import SourceConfig

SOURCE = SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8)
PROMPT_FIELDS = {f.name for f in dataclasses.fields(PromptConfig)}
SAMPLES = SampleConfig(min_history=2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the module: the first setup builds it, later ones are hits."""
    return tmp_path_factory.mktemp("sample-cache")


def make_dm(cache_dir: Path, tokenizer=None, **kwargs) -> RatingDataModule:
    """A set-up DataModule; `PromptConfig` fields among `kwargs` go into its `prompt`."""
    prompt = {k: kwargs.pop(k) for k in list(kwargs) if k in PROMPT_FIELDS}
    kwargs = {
        "source": SOURCE,
        "samples": SAMPLES,
        "cache_dir": str(cache_dir),
        "prompt": PromptConfig(**prompt),
        **kwargs,
    }
    dm = RatingDataModule(**kwargs)
    dm.setup()
    if tokenizer is not None:
        dm.set_tokenizer(tokenizer)
    return dm


def write_csv(path: Path, users: int = 12, per_user: int = 6, shift: int = 0) -> Path:
    """A generic CSV with its own column names (mapped by `CSV_COLUMNS`)."""
    lines = ["uid,mid,stars,when,text"]
    for u in range(users):
        for k in range(per_user):
            item = (u * 3 + k * 2) % 15  # six distinct items per user
            stars = 1 + (u + k + shift) % 5
            lines.append(f'{u},{item},{stars},{1_600_000_000 + u * 7 + k * 1000},"user {u} on item {item}"')
    path.write_text("\n".join(lines) + "\n")
    return path


CSV_COLUMNS = {"user": "uid", "item": "mid", "rating": "stars", "timestamp": "when", "review": "text"}


def same_data(a: tuple[InteractionData, SampleTable], b: tuple[InteractionData, SampleTable]) -> bool:
    (da, ta), (db, tb) = a, b
    return (
        da.interactions == db.interactions
        and da.items == db.items
        and da.scale == db.scale
        and da.name == db.name
        and ta.columns() == tb.columns()
        and ta.dropped_short == tb.dropped_short
    )


# -- PromptRenderer -------------------------------------------------------------------------------


def some_inputs(dm: RatingDataModule, split: str = "validation", count: int = 12) -> list[prompts.PromptInput]:
    return [prompt_input(dm.data, dm.table, p) for p in dm.positions(split)[:count]]


def test_renderer_uses_the_system_role_when_the_template_has_one(cache_dir, tiny_tokenizer) -> None:
    dm = make_dm(cache_dir)
    renderer = PromptRenderer(tiny_tokenizer, max_prompt_tokens=None)
    assert renderer.system_merged is False
    for inp in some_inputs(dm, count=3):
        text = renderer.render(inp).text
        expected = tiny_tokenizer.apply_chat_template(
            prompts.build_messages(inp), tokenize=False, add_generation_prompt=True
        )
        assert text == expected
        assert text.startswith(f"<|im_start|>system\n{prompts.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nPredict")
        assert text.endswith("</rate><|im_end|>\n<|im_start|>assistant\n")


def test_renderer_merges_the_system_prompt_once_without_a_system_role(cache_dir, tiny_tokenizer_no_system) -> None:
    dm = make_dm(cache_dir)
    renderer = PromptRenderer(tiny_tokenizer_no_system, max_prompt_tokens=None)
    assert renderer.system_merged is True
    for inp in some_inputs(dm, count=3):
        text = renderer.render(inp).text
        expected = tiny_tokenizer_no_system.apply_chat_template(
            prompts.merge_system(prompts.build_messages(inp)), tokenize=False, add_generation_prompt=True
        )
        assert text == expected
        assert text.count(prompts.SYSTEM_PROMPT) == 1
        assert text.startswith(f"<|im_start|>user\n{prompts.SYSTEM_PROMPT}\n\nPredict how this user")
        assert "<|im_start|>system" not in text
    bare = PromptRenderer(tiny_tokenizer_no_system, max_prompt_tokens=None, system_prompt=None)
    assert bare.system_merged is False
    assert bare.render(some_inputs(dm, count=1)[0]).text.startswith("<|im_start|>user\nPredict how this user")


def test_renderer_merges_when_the_template_silently_drops_the_system_prompt(cache_dir, tiny_tokenizer) -> None:
    tiny_tokenizer.chat_template = (
        "{%- for m in messages if m['role'] != 'system' -%}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )
    renderer = PromptRenderer(tiny_tokenizer, max_prompt_tokens=None)
    assert renderer.system_merged is True
    text = renderer.render(some_inputs(make_dm(cache_dir), count=1)[0]).text
    assert text.startswith(f"<|im_start|>user\n{prompts.SYSTEM_PROMPT}\n\nPredict") and text.count("You are") == 1


def test_renderer_falls_back_to_the_full_template_when_the_split_fails(cache_dir, tiny_tokenizer) -> None:
    # the template shows the content twice, so it cannot be cut around one sentinel
    tiny_tokenizer.chat_template = (
        "{%- for m in messages -%}{{ m['role'] + ': ' + m['content'] + ' | ' + m['content'] + '\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'assistant: ' }}{%- endif -%}"
    )
    renderer = PromptRenderer(tiny_tokenizer, max_prompt_tokens=None, response_prefix="<analyze user>")
    assert renderer._prefix is None
    inp = some_inputs(make_dm(cache_dir), count=1)[0]
    expected = tiny_tokenizer.apply_chat_template(
        prompts.build_messages(inp), tokenize=False, add_generation_prompt=True
    )
    assert renderer.render(inp).text == expected + "<analyze user>"


@pytest.mark.parametrize("no_system", [False, True])
def test_response_prefix_ends_the_prompt(cache_dir, no_system: bool) -> None:
    tokenizer = make_tiny_tokenizer(system_role=not no_system)
    inp = some_inputs(make_dm(cache_dir), count=1)[0]
    plain = PromptRenderer(tokenizer, max_prompt_tokens=None).render(inp).text
    prefixed = PromptRenderer(tokenizer, max_prompt_tokens=None, response_prefix="<analyze user>").render(inp).text
    assert prefixed == plain + "<analyze user>"
    assert prefixed.endswith("<|im_start|>assistant\n<analyze user>")


def test_render_many_equals_render_and_counts_tokens(cache_dir, tiny_tokenizer) -> None:
    dm = make_dm(cache_dir)
    inputs = some_inputs(dm, "train", count=24)
    budget = 700
    single, batched = PromptRenderer(tiny_tokenizer, budget), PromptRenderer(tiny_tokenizer, budget)
    one_by_one = [single.render(inp) for inp in inputs]
    assert batched.render_many(inputs) == one_by_one
    shortened = sum(f.shortened for f in one_by_one)
    assert 0 < shortened < len(inputs)  # the budget bites on some prompts only
    for renderer in (single, batched):
        assert (renderer.stats.rendered, renderer.stats.shortened) == (len(inputs), shortened)
    for fitted in one_by_one:
        ids = tiny_tokenizer(fitted.text, add_special_tokens=False)["input_ids"]
        assert fitted.num_tokens == len(ids) == single.count_tokens(fitted.text)
        assert fitted.num_tokens <= budget
        if fitted.shortened:
            assert fitted.review_chars < 200 or fitted.dropped_records > 0
    texts = [f.text for f in one_by_one[:3]]
    assert single.count_many(texts) == [single.count_tokens(t) for t in texts]


# -- batches --------------------------------------------------------------------------------------


def test_prompt_batches(cache_dir, tiny_tokenizer) -> None:
    dm = make_dm(cache_dir, tiny_tokenizer, eval_batch_size=4, max_prompt_tokens=800)
    assert split_counts(dm.table) == {s: len(dm.positions(s)) for s in ("train", "validation", "test")}
    ds = dm.dataset("validation")
    rows, pad = dm.data.interactions, tiny_tokenizer.pad_token_id
    seen = []
    for batch in dm.val_dataloader():
        ids, mask = batch["input_ids"], batch["attention_mask"]  # [B, P]
        assert ids.shape == mask.shape and ids.dtype == torch.long and ids.shape[0] <= 4
        for key in ("target", "fallback", "sample_id", "history_len"):
            assert batch[key].shape == (ids.shape[0],)
        for row in range(ids.shape[0]):
            pos = int(batch["sample_id"][row])
            item = ds[len(seen)]
            assert item["sample_id"] == pos
            n = len(item["input_ids"])
            assert int(mask[row].sum()) == n
            assert mask[row, ids.shape[1] - n :].all() and not mask[row, : ids.shape[1] - n].any()  # left padding
            assert (ids[row, : ids.shape[1] - n] == pad).all()
            assert ids[row, ids.shape[1] - n :].tolist() == item["input_ids"]
            assert batch["target"][row].item() == rows[dm.table.target[pos]].rating and scale_of(batch) == dm.scale
            assert batch["fallback"][row].item() == pytest.approx(
                fallback_rating(dm.scale, dm.table.user_avg[pos], dm.table.item_avg[pos])
            )
            assert batch["history_len"][row].item() == len(dm.table.user_history[pos]) + len(
                dm.table.item_history[pos]
            )
            assert n <= 800
            seen.append(pos)
        assert int(mask.sum(1).max()) == ids.shape[1]  # no all-padding column
    assert seen == dm.positions("validation")
    assert len(dm.train_dataloader()) == len(dm.positions("train")) // dm.batch_size  # drop_last


def test_fallback_rating_rule(cache_dir) -> None:
    dm = make_dm(cache_dir)
    table, scale = dm.table, dm.data.scale
    kinds = set()
    for pos in range(len(table)):
        if table.user_avg[pos] is not None:
            want, kinds = scale.clip(table.user_avg[pos]), kinds | {"user"}
        elif table.item_avg[pos] is not None:
            want, kinds = scale.clip(table.item_avg[pos]), kinds | {"item"}
        else:
            want = (scale.low + scale.high) / 2
        assert fallback_rating(scale, table.user_avg[pos], table.item_avg[pos]) == pytest.approx(want)
    assert kinds == {"user", "item"}
    hand = [(7.0, 1.0), (None, 0.2), (None, None), (0.1, 3.0)]
    assert [fallback_rating(SCALES["0.5-5"], u, i) for u, i in hand] == [5.0, 0.5, 2.75, 0.5]


def test_sft_collate_masks_the_prompt_and_padding() -> None:
    out = sft_collate([[1, 2, 3], [4]], [[5], [7, 8]], pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 5], [4, 7, 8, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert out["labels"].tolist() == [[-100, -100, -100, 5], [-100, 7, 8, -100]]


def test_sft_collate_with_real_prompts(cache_dir, tiny_tokenizer) -> None:
    dm = make_dm(cache_dir, tiny_tokenizer, max_prompt_tokens=None)
    ds = dm.dataset("train")
    prompt_ids = [ds[i]["input_ids"] for i in range(3)]
    texts = [prompts.format_completion("likes drama", "a drama", "fits", r, dm.scale) for r in (1.0, 4.0, 5.0)]
    completion_ids = [
        tiny_tokenizer(t + tiny_tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in texts
    ]
    out = sft_collate(prompt_ids, completion_ids, tiny_tokenizer.pad_token_id)
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    assert out["input_ids"].shape == out["labels"].shape == (3, width)
    for row, (p, c, text) in enumerate(zip(prompt_ids, completion_ids, texts)):
        labels, ids = out["labels"][row], out["input_ids"][row]
        assert (labels[: len(p)] == -100).all() and (labels[len(p) + len(c) :] == -100).all()
        assert labels[len(p) : len(p) + len(c)].tolist() == c
        assert ids[: len(p) + len(c)].tolist() == p + c
        assert (ids[len(p) + len(c) :] == tiny_tokenizer.pad_token_id).all()
        assert tiny_tokenizer.decode(labels[labels != -100]) == text + tiny_tokenizer.eos_token


# -- resumable sampler ----------------------------------------------------------------------------


def test_sampler_is_seeded_per_epoch() -> None:
    def order(seed: int, epoch: int, shuffle: bool = True) -> list[int]:
        sampler = ResumableSampler(20, seed=seed, shuffle=shuffle)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0) and sorted(order(0, 0)) == list(range(20))
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 3, shuffle=False) == list(range(20))
    assert len(ResumableSampler(20)) == 20


@pytest.mark.parametrize("size", [20, 21])
def test_sampler_shards_across_two_replicas(size: int) -> None:
    shards = []
    for rank in (0, 1):
        sampler = ResumableSampler(size, num_replicas=2, rank=rank, seed=5)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == -(-size // 2)
    assert set(shards[0]) | set(shards[1]) == set(range(size))
    if size % 2 == 0:
        assert not set(shards[0]) & set(shards[1])  # disjoint
    else:  # DistributedSampler pads an odd total with one repeated index
        assert len(set(shards[0]) & set(shards[1])) <= 1


@pytest.mark.parametrize(("replicas", "skip"), [(1, 0), (1, 6), (1, 20), (2, 3)])
def test_sampler_skip_resumes_once(replicas: int, skip: int) -> None:
    for rank in range(replicas):
        full = ResumableSampler(20, num_replicas=replicas, rank=rank, seed=1)
        full.set_epoch(4)
        uninterrupted = list(full)
        resumed = ResumableSampler(20, num_replicas=replicas, rank=rank, seed=1)
        resumed.set_epoch(4)
        resumed.skip = skip
        assert list(resumed) == uninterrupted[skip:]
        assert list(resumed) == uninterrupted  # the skip applies to one iteration only
        assert resumed.skip == 0


def test_datamodule_resumes_mid_epoch(cache_dir, tiny_tokenizer) -> None:
    def ids(loader, count: int) -> list[list[int]]:
        return [b["sample_id"].tolist() for b in itertools.islice(loader, count)]

    dm = make_dm(cache_dir, tiny_tokenizer, batch_size=2, max_prompt_tokens=None)
    assert dm.state_dict() == {}  # no trainer attached: nothing to save
    loader = dm.train_dataloader()
    dm._train_sampler.set_epoch(1)  # what Lightning does at the start of epoch 1
    uninterrupted = ids(loader, 5)
    resumed_dm = make_dm(cache_dir, tiny_tokenizer, batch_size=2, max_prompt_tokens=None)
    resumed_dm.load_state_dict({"epoch": 1, "consumed": 4})
    resumed = resumed_dm.train_dataloader()
    assert ids(resumed, 3) == uninterrupted[2:]
    again = ids(resumed, 5)  # the next epoch pass starts from the top again
    assert again == uninterrupted
    resumed_dm.load_state_dict({})  # an empty state changes nothing
    assert resumed_dm._resume_state is None


def test_workers_give_the_same_batches(cache_dir, tiny_tokenizer) -> None:
    def batches(workers: int) -> list[dict]:
        dm = make_dm(cache_dir, tiny_tokenizer, num_workers=workers, eval_batch_size=8, max_prompt_tokens=700)
        return list(dm.val_dataloader())

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) > 1
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


# -- cache ----------------------------------------------------------------------------------------


def test_cache_hit_returns_equal_data(tmp_path) -> None:
    first = load_or_build(SOURCE, SAMPLES, tmp_path)
    second = load_or_build(SOURCE, SAMPLES, tmp_path)
    assert (first[2], second[2]) == (False, True)
    assert same_data(first[:2], second[:2])
    assert isinstance(second[0].interactions, ArrowRows) and isinstance(second[1].target, ArrowColumn)  # mapped
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no half-written folders
    other = load_or_build(SOURCE, dataclasses.replace(SAMPLES, min_history=3), tmp_path)
    assert other[2] is False and len(list(tmp_path.iterdir())) == 2  # another setting, another entry
    no_cache = load_or_build(SOURCE, SAMPLES, tmp_path / "unused", use_cache=False)
    assert no_cache[2] is False and not (tmp_path / "unused").exists()
    assert same_data(first[:2], no_cache[:2])


def test_datamodule_setup_uses_the_cache(tmp_path, tiny_tokenizer) -> None:
    a = make_dm(tmp_path)
    b = make_dm(tmp_path)
    assert a.table.columns() == b.table.columns() and a.data.interactions == b.data.interactions
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1


def test_cache_rebuilds_when_a_source_file_changes(tmp_path) -> None:
    path = write_csv(tmp_path / "ratings.csv")
    source = SourceConfig(format="csv", path=str(path), columns=CSV_COLUMNS)
    samples = SampleConfig(min_history=1)
    cache = tmp_path / "cache"
    data, table, hit = load_or_build(source, samples, cache)
    assert not hit and len(data.interactions) == 72 and data.interactions[0].review == "user 0 on item 0"
    assert load_or_build(source, samples, cache)[2] is True
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched: same bytes, new mtime
    assert load_or_build(source, samples, cache)[2] is False
    assert load_or_build(source, samples, cache)[2] is True
    write_csv(path, shift=1)  # edited
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    changed, _, hit = load_or_build(source, samples, cache)
    assert not hit and [r.rating for r in changed.interactions] != [r.rating for r in data.interactions]


@pytest.mark.parametrize("damage", ["meta", "samples", "interactions", "missing_meta"])
def test_damaged_cache_is_rebuilt(tmp_path, damage: str) -> None:
    expected = load_or_build(SOURCE, SAMPLES, tmp_path / "none", use_cache=False)
    load_or_build(SOURCE, SAMPLES, tmp_path)  # (what it returns maps the files damaged below: not read again)
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    if damage == "meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "missing_meta":  # what an interrupted, non-atomic write would leave
        (folder / "meta.json").unlink()
    else:
        for arrow in (folder / damage).glob("*.arrow"):
            arrow.write_bytes(b"garbage")
    rebuilt = load_or_build(SOURCE, SAMPLES, tmp_path)
    assert rebuilt[2] is False and same_data(expected[:2], rebuilt[:2])
    assert load_or_build(SOURCE, SAMPLES, tmp_path)[2] is True


def test_setup_with_an_impossible_filter_names_min_history(tmp_path) -> None:
    dm = RatingDataModule(SOURCE, SampleConfig(min_history=10_000), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"no train samples.*samples\.min_history=10000"):
        dm.setup()
    data, table, hit = load_or_build(SOURCE, SampleConfig(min_history=10_000), tmp_path)
    assert hit and len(table) == 0 and table.dropped_short == len(data.interactions)  # an empty table caches too


def test_datamodule_argument_checks(tmp_path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RatingDataModule(batch_size=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptConfig(max_prompt_tokens=8)
    dm = make_dm(tmp_path)
    with pytest.raises(RuntimeError, match="data.tokenizer"):
        dm.dataset("train")


def test_datamodule_passes_response_prefix_to_its_renderer(cache_dir, tiny_tokenizer) -> None:
    dm = make_dm(cache_dir, tiny_tokenizer, response_prefix="<analyze user>", max_prompt_tokens=None)
    assert dm.renderer.response_prefix == "<analyze user>"
    text = dm.dataset("test").prompt_text(0)
    assert text.endswith("<|im_start|>assistant\n<analyze user>")
    ids = dm.dataset("test")[0]["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


def test_a_cache_another_process_stored_first_is_kept(tmp_path) -> None:
    """Commands started together build the same cache: the later store keeps the first complete one (a
    process may be reading it) and leaves no temporary folder behind."""
    from reczero.data import cache

    load_or_build(SOURCE, SAMPLES, tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    stamp = (folder / "meta.json").stat().st_mtime_ns
    data, table, _ = load_or_build(SOURCE, SAMPLES, tmp_path / "none", use_cache=False)
    cache._store(folder, data, table)  # the slower of two builders
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert load_or_build(SOURCE, SAMPLES, tmp_path)[2] is True
