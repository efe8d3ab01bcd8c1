"""RecOne on the tiny model: the completion-only SFT loss and batches, one SFT step, resuming, the hand-over
of the SFT adapter to GRPO, coldstart (keep/drop decisions as pure functions, and one tiny end-to-end run
that resumes), and the new YAML configs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny import make_tiny_llama, perturb_lora

from reczero import answers
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig, prompt_input
from reczero.data.samples import SampleConfig
from reczero.data.schema import SCALES
from reczero.data.sources import SourceConfig
from reczero.modules.grpo_module import GRPOModule
from reczero.modules.sft_module import SFTModule, completion_loss, policy_completion_loss
from reczero.policy.adapters import reference_mode, save_adapter, save_stacked_adapter
from reczero.policy.factory import PolicyConfig, build_policy
from reczero.prompts import copy_sources, format_completion
from reczero.rationales import example_answer
from reczero.recone import coldstart
from reczero.recone.hints import leaks_hint

SCALE = SCALES["1-5"]
PREFIX = "<analyze user>"
DATA = dict(
    source=SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8),
    samples=SampleConfig(user_history=3, item_history=3, min_history=2, max_samples={"validation": 4, "test": 4}),
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def make_dm(cache: str, tok=None, answer_example: bool = False, **kwargs) -> RatingDataModule:
    """A set-up DataModule; `tok` (a tokenizer object) is handed over, `tokenizer=` (a model) is loaded."""
    prompt = PromptConfig(max_prompt_tokens=1536, response_prefix=PREFIX, answer_example=answer_example)
    dm = RatingDataModule(**{**DATA, "prompt": prompt, "cache_dir": cache, **kwargs})
    dm.setup()
    if tok is not None:
        dm.set_tokenizer(tok)
    return dm


def trace_text(dm: RatingDataModule, pos: int) -> str:
    rating = dm.data.interactions[dm.table.target[pos]].rating
    return format_completion(f"User {pos} likes dramas.", "A drama.", "It fits.", rating, dm.scale)


def write_traces(dm: RatingDataModule, path: Path, count: int) -> dict[int, str]:
    positions = dm.positions("train")[:count]
    texts = {p: trace_text(dm, p) for p in positions}
    lines = [
        {"key": dm.sample_key(p), "completion": t, "rating": dm.data.interactions[dm.table.target[p]].rating}
        for p, t in texts.items()
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return texts


# -- the loss and the batches ----------------------------------------------------------------------
def test_completion_loss_counts_completion_tokens_only():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)  # [B, L, V]
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, -100, -100, 7, 8, 9]])  # [B, L]
    loss, count = completion_loss(logits, labels)
    manual = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 1], logits[0, 2], logits[0, 3], logits[1, 2], logits[1, 3], logits[1, 4]]),
        torch.tensor([3, 4, 5, 7, 8, 9]),
    )
    assert count == 6 and torch.allclose(loss, manual)
    changed = logits.clone()
    changed[0, [0, 4, 5]] += 5.0  # positions whose next label is masked (prompt, padding): no effect
    changed[1, [0, 1, 5]] -= 3.0
    assert torch.allclose(completion_loss(changed, labels)[0], loss)
    assert torch.allclose(completion_loss(logits[:, 1:], labels)[0], loss)  # only the last K positions given


def test_sft_batches_mask_the_prompt_and_end_with_eos(cache, tiny_tokenizer):
    dm = make_dm(cache, tiny_tokenizer)
    texts = {p: trace_text(dm, p) for p in dm.positions("train")[:5]}
    batch = next(iter(dm.sft_dataloader(texts, batch_size=5, shuffle=False)))
    prompts = dm.dataset("train")
    for row, pos in enumerate(batch["sample_id"].tolist()):
        prompt_ids = prompts[prompts.positions.index(pos)]["input_ids"]
        ids, labels = batch["input_ids"][row], batch["labels"][row]  # [L]
        n = len(prompt_ids)
        assert ids[:n].tolist() == prompt_ids and (labels[:n] == -100).all()
        counted = labels != -100
        assert counted.nonzero().min().item() == n
        assert torch.equal(labels[counted], ids[counted])
        completion = labels[counted].tolist()
        assert completion[-1] == tiny_tokenizer.eos_token_id
        assert PREFIX + tiny_tokenizer.decode(completion[:-1]) == texts[pos]  # the prefix lives in the prompt
        assert (labels[counted.nonzero().max().item() + 1 :] == -100).all()  # padding


def test_policy_loss_with_trimmed_logits_equals_the_full_computation(cache, tiny_tokenizer, tiny_policy):
    dm = make_dm(cache, tiny_tokenizer)
    texts = {p: trace_text(dm, p) for p in dm.positions("train")[:3]}
    batch = next(iter(dm.sft_dataloader(texts, batch_size=3, shuffle=False)))
    trimmed, count = policy_completion_loss(tiny_policy, batch)
    full = tiny_policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(trimmed, completion_loss(full, batch["labels"])[0], atol=1e-5)
    assert count == (batch["labels"] != -100).sum()


def test_sft_loader_is_bucketed_and_resumes_mid_epoch(cache, tiny_tokenizer):
    def ids(loader, count: int) -> list[list[int]]:
        return [b["sample_id"].tolist() for b in itertools.islice(loader, count)]

    dm = make_dm(cache, tiny_tokenizer, batch_size=2)
    texts = {p: trace_text(dm, p) * (1 + p % 3) for p in dm.positions("train")[:20]}  # varied lengths
    loader = dm.sft_dataloader(texts, dm.batch_size)
    epoch = ids(loader, 10)
    assert sorted(itertools.chain(*epoch)) == sorted(texts)  # every trace once per epoch
    lengths = {pos: n for (pos, _, _), n in zip(loader.dataset.items, loader.dataset.lengths())}
    ranked = sorted(lengths.values(), reverse=True)  # one chunk here: batches are neighbours in this order
    pairs = sorted(tuple(sorted((lengths[a], lengths[b]), reverse=True)) for a, b in epoch)
    assert pairs == sorted(zip(ranked[::2], ranked[1::2])), "bucketed batches pair traces of similar length"
    resumed = make_dm(cache, tiny_tokenizer, batch_size=2)
    resumed.load_state_dict({"epoch": 0, "consumed": 6})
    assert ids(resumed.sft_dataloader(texts, resumed.batch_size), 7) == epoch[3:]


def test_datamodule_with_traces_serves_them_and_holds_some_out(tmp_path, tiny_tokenizer):
    """`data.traces`: train batches are the matched traces (SFT), and `heldout_traces` of them, drawn
    with `data.seed`, become a second validation loader instead."""
    cache = str(tmp_path / "cache")
    traces = tmp_path / "traces.jsonl"
    texts = write_traces(make_dm(cache), traces, 10)
    dm = make_dm(cache, tiny_tokenizer, traces=str(traces), heldout_traces=3, batch_size=2)
    train, held = dm.trace_completions()
    assert sorted({**train, **held}) == sorted(texts) and len(held) == 3 and not set(train) & set(held)
    assert all(train[p] == texts[p] for p in train)
    seen = [p for batch in dm.train_dataloader() for p in batch["sample_id"].tolist()]
    assert len(seen) == len(set(seen)) == 6 and set(seen) <= set(train)  # 7 traces, batches of 2, drop_last
    prompts, held_out = dm.val_dataloader()
    assert "labels" not in next(iter(prompts)) and "target" in next(iter(prompts))
    assert sorted(p for b in held_out for p in b["sample_id"].tolist()) == sorted(held)
    again = make_dm(cache, tiny_tokenizer, traces=str(traces), heldout_traces=3)
    assert again.trace_completions()[1] == held  # the same seeded draw


# -- training ----------------------------------------------------------------------------------------
class _SampleLog(L.Callback):
    """Records each step's sample ids; with `stop_at`, ends the run there (as if it were killed)."""

    def __init__(self, stop_at: int | None = None):
        self.steps: list[list[int]] = []
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(batch["sample_id"].tolist())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def _fit(tmp_path, model_dir, traces, max_steps, ckpt_dir=None, ckpt_path=None, stop_at=None, **module_kwargs):
    torch.manual_seed(0)  # the fresh LoRA A is drawn from the global generator
    module = SFTModule(
        policy=PolicyConfig(model=str(model_dir), lora_r=4, lora_alpha=8),
        prompt=PromptConfig(max_prompt_tokens=1536, response_prefix=PREFIX),
        learning_rate=1e-2,
        **module_kwargs,
    )
    log = _SampleLog(stop_at)
    callbacks = [log]
    if ckpt_dir is not None:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_last=True))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=ckpt_dir is not None,
        callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    data = make_dm(str(tmp_path / "cache"), batch_size=2, traces=str(traces), tokenizer=str(model_dir))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer, log.steps, before


def test_one_sft_step_moves_lora_only(tmp_path, tiny_model_dir):
    traces = tmp_path / "traces.jsonl"
    write_traces(make_dm(str(tmp_path / "cache")), traces, 8)
    module, trainer, _, before = _fit(tmp_path, tiny_model_dir, traces, max_steps=1)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss"])
    moved = {n for n, p in module.policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert moved and moved <= trainable, "only LoRA weights may change"
    assert any("lora_B" in n for n in moved)


def test_sft_resumes_from_a_checkpoint_exactly(tmp_path, tiny_model_dir):
    traces = tmp_path / "traces.jsonl"
    write_traces(make_dm(str(tmp_path / "cache")), traces, 10)
    full, _, full_steps, _ = _fit(tmp_path, tiny_model_dir, traces, max_steps=3)
    _, _, first_steps, _ = _fit(tmp_path, tiny_model_dir, traces, 3, ckpt_dir=tmp_path / "ckpt", stop_at=2)
    resumed, trainer, rest, _ = _fit(
        tmp_path, tiny_model_dir, traces, 3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert trainer.global_step == 3
    assert first_steps + rest == full_steps, "the resumed run continues with the next unseen batch"
    for (name, a), b in zip(full.policy.named_parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_module_arguments_are_checked():
    with pytest.raises(ValueError, match="on_bad_trace"):
        RatingDataModule(traces="t.jsonl", on_bad_trace="ignore")
    with pytest.raises(ValueError, match="heldout_traces"):
        RatingDataModule(traces="t.jsonl", heldout_traces=-1)
    with pytest.raises(ValueError, match="adapter_path"):
        GRPOModule(reference="sft")
    with pytest.raises(ValueError, match="reference"):
        GRPOModule(reference="teacher")


# -- SFT -> GRPO ---------------------------------------------------------------------------------------
@pytest.fixture
def sft_adapter(tmp_path, tiny_model_dir):
    sft = build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8))
    perturb_lora(sft, scale=0.1)
    return sft, save_adapter(sft, tmp_path / "sft-adapter")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_grpo_starts_from_the_sft_adapter(tiny_model_dir, tiny_tokenizer, sft_adapter):
    sft, path = sft_adapter
    ids = tiny_tokenizer(["<analyze user> likes drama </analyze user>"], return_tensors="pt")["input_ids"]
    base_logits = _logits(make_tiny_llama(tiny_tokenizer), ids)
    for reference in ("base", "sft"):
        grpo = GRPOModule(policy=PolicyConfig(model=str(tiny_model_dir), adapter_path=str(path)), reference=reference)
        grpo.configure_model()
        torch.testing.assert_close(_logits(grpo.policy, ids), _logits(sft, ids), atol=1e-5, rtol=1e-5)
        with reference_mode(grpo.policy):
            expected = base_logits if reference == "base" else _logits(sft, ids)
            torch.testing.assert_close(_logits(grpo.policy, ids), expected, atol=1e-5, rtol=1e-5)
        assert all("lora_" in n for n, p in grpo.policy.named_parameters() if p.requires_grad)


def test_stacked_adapter_reproduces_the_sft_reference_policy(tmp_path, tiny_model_dir, tiny_tokenizer, sft_adapter):
    _, path = sft_adapter
    grpo = GRPOModule(policy=PolicyConfig(model=str(tiny_model_dir), adapter_path=str(path)), reference="sft")
    grpo.configure_model()
    perturb_lora(grpo.policy, scale=0.05, seed=1)  # stands for GRPO's training of the fresh LoRA
    out = save_stacked_adapter(grpo.policy, path, tmp_path / "stacked")
    reloaded = build_policy(PolicyConfig(model=str(tiny_model_dir), adapter_path=str(out)))
    ids = tiny_tokenizer(["<match> it fits </match> <rate> 4 </rate>"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(grpo.policy, ids), atol=1e-5, rtol=1e-5)


# -- coldstart -------------------------------------------------------------------------------------------
def test_keep_and_drop_decisions():
    four = format_completion("Likes dramas.", "A drama.", "Fits.", 4, SCALE)
    assert coldstart.judge_direct(four, 4, SCALE, 0.5).keep
    assert coldstart.judge_direct(four, 3.5, SCALE, 0.5).keep  # within the tolerance
    assert coldstart.judge_direct(four, 3, SCALE, 0.5).reason == "wrong_rating"
    assert coldstart.judge_direct("<rate>4</rate>", 4, SCALE, 0.5).reason == "format:missing_tag:analyze user"
    assert coldstart.judge_hinted(four, 4, SCALE) == coldstart.Verdict(True, "ok", 4.0)
    assert coldstart.judge_hinted(four, 3.5, SCALE).reason == "wrong_rating"  # must equal the hint exactly
    leaky = format_completion("Her ratings are high.", "A drama.", "Fits.", 4, SCALE)
    assert coldstart.judge_hinted(leaky, 4, SCALE).reason == "leak:talk:ratings"
    assert coldstart.judge_direct(leaky, 4, SCALE, 0.5).keep  # no hint given: nothing to leak
    verdicts = [coldstart.judge_hinted(t, 4, SCALE) for t in ("junk", leaky, four.replace(">4<", ">2<"))]
    assert coldstart.drop_reason(verdicts) == "leak"
    assert coldstart.drop_reason(verdicts[::2]) == "wrong_rating"
    assert coldstart.first_kept(["junk", leaky, four], lambda t: coldstart.judge_hinted(t, 4, SCALE))[0] == 2


def test_copies_of_the_one_shot_example_are_rejected():
    example = example_answer("u|i|1", SCALE, 3.5)
    sources = copy_sources(SCALE, example)
    rating = answers.parse_rating(example)
    assert coldstart.judge_direct(example, rating, SCALE, 0.5, sources).reason == "copied_example:analyze user"
    assert coldstart.judge_direct(example, rating, SCALE, 0.5).keep  # no example in the prompt: a fine answer
    own = format_completion("Likes dramas.", "A drama.", "Fits.", 4, SCALE)
    assert coldstart.judge_hinted(own, 4, SCALE, sources).keep


@pytest.mark.parametrize("with_example", [False, True])
def test_hint_goes_inside_the_user_turn(cache, tiny_tokenizer, with_example):
    dm = make_dm(cache, tiny_tokenizer, answer_example=with_example)
    prompt = dm.dataset("train").prompt_text(0)
    example = dm.renderer.example_for(prompt_input(dm.data, dm.table, dm.positions("train")[0]))
    assert (example is not None) == with_example and (not example or example in prompt)
    hinted = coldstart.add_hint(prompt, 4.0, SCALE, example)
    hint = coldstart.hint_sentence(4.0, SCALE)
    assert hint == (
        "The user's actual rating was 4. Explain the reasoning that leads to it without mentioning the rating itself."
    )
    assert hinted.replace("\n" + hint, "") == prompt
    assert hinted.index(hint) < hinted.rindex("<|im_start|>assistant") and hinted.endswith(PREFIX)
    assert hinted.index(hint) > prompt.rindex("<rate>")  # after the skeleton and any example answer
    assert leaks_hint(hint, 4.0, SCALE) is not None  # the sentence itself would leak, of course


@pytest.mark.parametrize("hint_tries", [None, 0])
def test_coldstart_on_the_tiny_model_writes_stats_and_resumes(tmp_path, cache, tiny_tokenizer, tiny_model, hint_tries):
    dm = make_dm(cache)
    cfg = coldstart.ColdstartOptions(
        num_traces=50, max_samples=3, tries=2, hint_tries=hint_tries, tolerance=0.5, batch_size=2,
        temperature=1.0, top_p=1.0, max_new_tokens=6, seed=0,
    )  # fmt: skip
    out = tmp_path / "traces.jsonl"
    first = coldstart.run_coldstart(tiny_model, tiny_tokenizer, dm, out, cfg)
    stats = json.loads((tmp_path / "traces.jsonl.stats.json").read_text())
    assert stats == first
    lines = out.read_text().splitlines()
    assert stats["kept_direct"] + stats["kept_hint"] == len(lines)
    assert len(lines) + stats["dropped"] == 3 == len(lines) + len(stats["dropped_keys"])
    assert sum(stats["drop_reasons"].values()) == stats["dropped"]
    retried = 3 - stats["kept_direct"]  # asked again with the hint, unless the round is off
    hinted = sum(stats["hint_rejects"].values()) + stats["kept_hint"]
    if hint_tries == 0:
        assert stats["hint_rejects"] == {} and stats["kept_hint"] == 0
    else:  # each retried sample got `tries` hinted completions, fewer only when one was kept
        assert retried > 0 and retried <= hinted <= 2 * retried
        assert stats["kept_hint"] > 0 or hinted == 2 * retried
    second = coldstart.run_coldstart(tiny_model, tiny_tokenizer, dm, out, cfg)  # resumes: 3 new samples
    keys = {json.loads(line)["key"] for line in out.read_text().splitlines()} | set(second["dropped_keys"])
    assert len(keys) == 6


def test_coldstart_cli_reads_the_sft_config(tmp_path):
    from reczero.cli import command_parser, main

    parser = command_parser("coldstart", coldstart.coldstart_command)
    cfg = parser.parse_args(["--config", "configs/sft.yaml"])
    assert cfg.data.traces == "checkpoints/traces-synthetic.jsonl"
    assert cfg.model.init_args.policy.model == "bundled:smollm2-135m-instruct" == cfg.data.tokenizer
    assert cfg.data.prompt.response_prefix == PREFIX and cfg.tries == 4 and cfg.tolerance == 0.5
    existing = tmp_path / "t.jsonl"
    existing.write_text("")
    assert main(["coldstart", "--config", "configs/sft.yaml", "--output", str(existing), "--if-missing"]) is None


def test_sft_fit_through_the_cli_with_held_out_traces(tmp_path, tiny_model_dir):
    from reczero.cli import main
    from reczero.evaluation.report import read_scalars

    cache, out = tmp_path / "cache", tmp_path / "run"
    traces = tmp_path / "traces.jsonl"
    samples = SampleConfig(user_history=6, item_history=6, min_history=2, max_samples={"validation": 16, "test": 64})
    write_traces(make_dm(str(cache), samples=samples), traces, 12)
    main(
        [
            "fit", "--config=configs/sft.yaml",
            f"--model.init_args.policy.model={tiny_model_dir}",
            f"--data.traces={traces}",
            "--data.heldout_traces=3",
            "--model.init_args.val_max_new_tokens=4",
            f"--model.init_args.adapter_dir={out / 'adapter'}",
            f"--data.cache_dir={cache}",
            "--data.source.synthetic_users=30", "--data.source.synthetic_items=20",
            "--data.source.synthetic_ratings_per_user=8",
            "--data.samples.user_history=6", "--data.samples.item_history=6", "--data.samples.min_history=2",
            "--data.prompt.max_prompt_tokens=1536",
            f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}",
            f"--trainer.callbacks.init_args.dirpath={out}",
            "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    assert (out / "adapter" / "adapter_config.json").exists()
    tags = ("train/loss", "train/lr", "train/tokens_per_s", "val/trace_loss", "val/mae", "val/parse_rate")
    assert set(read_scalars(out / "tb", tags)) == set(tags), "TensorBoard scalars expected"
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and all("lora_" in k for k in ckpt["state_dict"])
