"""Evaluation on the tiny model: decoding modes on known logits, honest fallback counting, checkpoint
loading, the `reczero evaluate` and `reczero baselines` commands."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from tiny import perturb_lora

from reczero import answers, rewards
from reczero.data.datamodule import RatingDataModule
from reczero.data.render import PromptConfig
from reczero.data.samples import SampleConfig, assign_splits
from reczero.data.schema import SCALES
from reczero.data.sources import SourceConfig
from reczero.evaluation.evaluate import EvalResult, SampleResult, evaluate, summarize
from reczero.policy.loading import load_checkpoint_weights
from reczero.rollout import decoding
from reczero.rollout.decoding import (
    DecodeConfig,
    Decoded,
    decode_batch,
    expected_from_logits,
    mean_rating,
    rating_candidates,
)

PAPER = rewards.RewardSpec()

SCRIPT = (
    "<analyze user>likes drama</analyze user><analyze item>a drama</analyze item><match>fits</match><rate>4</rate>"
)
RATE_AT = SCRIPT.index("<rate>") + len("<rate>")


class ScriptedLM(torch.nn.Module):
    """The tiny Llama with its logits replaced: greedy decoding writes SCRIPT, and the position right
    after SCRIPT's `<rate>` gets `rate_probs` (token id -> probability; the rest ~0), or, with None,
    keeps the inner model's own logits there.

    The completion position of a call is its last position id + 1 - the row's prompt length, which
    the prefill call (the one with `use_cache`) records. Every row writes the same number of tokens,
    so `generate` never drops rows mid-way and row i stays row i (times num_samples).
    """

    def __init__(self, inner, tokenizer, rate_probs: dict[int, float] | None, script: str = SCRIPT):
        super().__init__()
        self.inner = inner
        self.script = tokenizer.encode(script, add_special_tokens=False)
        at = script.find("<rate>")
        head = tokenizer.encode(script[: at + len("<rate>")], add_special_tokens=False) if at >= 0 else None
        self.rate_index = len(head) if head else -1  # -1: no rating position
        assert head is None or self.script[: len(head)] == head  # the cut falls on a token boundary
        self.eos = tokenizer.eos_token_id
        self.rate_logits = None if rate_probs is None else torch.full((inner.config.vocab_size,), -1e4)
        for token, p in (rate_probs or {}).items():
            self.rate_logits[token] = math.log(p)
        self.prompt_len = None
        self.calls: list[int] = []  # input width of every forward

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False, **kwargs):
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        if use_cache and input_ids.shape[1] > 1:  # prefill
            self.prompt_len = attention_mask.sum(-1)  # [B]
        rows = input_ids.shape[0]
        prompt_len = self.prompt_len.repeat_interleave(rows // len(self.prompt_len))  # [rows]
        index = position_ids[:, -1] + 1 - prompt_len  # completion position being predicted [rows]
        logits = out.logits.clone()
        self.calls.append(input_ids.shape[1])
        for r, i in enumerate(index.tolist()):
            if i == self.rate_index:
                if self.rate_logits is not None:  # else the inner model's own distribution stays
                    logits[r, -1] = self.rate_logits
            else:
                logits[r, -1] = -1e4
                logits[r, -1, self.script[i] if 0 <= i < len(self.script) else self.eos] = 0.0
        out.logits = logits
        return out


def _prompts(tokenizer, n: int = 2):
    enc = tokenizer(["a short prompt about films"] * n, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _tok(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, text
    return ids[0]


def prompt_batch(ids: torch.Tensor, mask: torch.Tensor, scale=SCALES["1-5"]) -> dict:
    """A `PromptCollator`-shaped batch of requests (no target: scored against a fallback of 3)."""
    scale = (scale.low, scale.high, scale.step)
    return {"input_ids": ids, "attention_mask": mask, "scale": scale, "fallback": torch.full((ids.shape[0],), 3.0)}


def decode_expected(model, tokenizer, ids, mask, prefix: str = "") -> list:
    """Expected-rating decoding of 32 tokens at most, on the 1-5 scale."""
    cfg = DecodeConfig("expected", max_new_tokens=32)
    return decode_batch(model, tokenizer, prompt_batch(ids, mask, SCALES["1-5"]), cfg, PAPER, prefix)


def tiny_data(tmp_path, **kwargs) -> RatingDataModule:
    return RatingDataModule(
        source=SourceConfig(format="synthetic", synthetic_users=30, synthetic_items=20, synthetic_ratings_per_user=8),
        samples=SampleConfig(user_history=3, item_history=3, min_history=2, max_samples={"validation": 6, "test": 6}),
        prompt=PromptConfig(max_prompt_tokens=2048),
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


# -- expected rating ----------------------------------------------------------------------------
def test_rating_candidates_cover_single_token_values(tiny_tokenizer):
    cands = rating_candidates(tiny_tokenizer, SCALES["1-5"])
    assert cands.covered == [1, 2, 3, 4, 5] and cands.missing == []
    pairs = {tiny_tokenizer.decode([t]): v for t, v in zip(cands.token_ids.tolist(), cands.values.tolist())}
    assert pairs["4"] == 4 and pairs[" 4"] == 4  # the tiny BPE has " 4" as one token too
    half = rating_candidates(tiny_tokenizer, SCALES["0.5-5"])  # "0.5", "4.5" are three tokens each
    assert half.covered == [1, 2, 3, 4, 5] and half.missing == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_expected_from_logits_by_hand(tiny_tokenizer):
    cands = rating_candidates(tiny_tokenizer, SCALES["1-5"])
    probs = {"3": 0.16, "4": 0.3, " 4": 0.1, "5": 0.24, "a": 0.2}  # 0.8 on ratings: 3 .2, 4 .5, 5 .3 after renorm
    logits = torch.full((len(tiny_tokenizer),), -1e4)
    for text, p in probs.items():
        logits[_tok(tiny_tokenizer, text)] = math.log(p)
    value, mass = expected_from_logits(logits, cands)
    assert value == pytest.approx(3 * 0.2 + 4 * 0.5 + 5 * 0.3)  # 4.1
    assert mass == pytest.approx(0.8)


def test_expected_decoding_on_known_logits(tiny_tokenizer, tiny_model):
    probs = {"3": 0.16, "4": 0.3, " 4": 0.1, "5": 0.24, "a": 0.2}  # argmax "4": greedy writes SCRIPT
    model = ScriptedLM(tiny_model, tiny_tokenizer, {_tok(tiny_tokenizer, t): p for t, p in probs.items()})
    ids, mask = _prompts(tiny_tokenizer)
    scale = SCALES["1-5"]
    greedy = decode_batch(
        model, tiny_tokenizer, prompt_batch(ids, mask, scale), DecodeConfig(max_new_tokens=64), PAPER
    )
    assert [d.completions[0] for d in greedy] == [SCRIPT, SCRIPT]
    assert [d.prediction for d in greedy] == [4.0, 4.0] and greedy[0].format_ok == [True]
    expected = decode_batch(
        model, tiny_tokenizer, prompt_batch(ids, mask, scale), DecodeConfig("expected", max_new_tokens=64), PAPER
    )
    for d in expected:
        assert d.prediction == pytest.approx(4.1)  # (3 * .16 + 4 * .4 + 5 * .24) / .8
        assert d.rate_mass == pytest.approx(0.8)
        assert d.completions == [SCRIPT]


def test_expected_decoding_reads_the_rating_off_the_decoding_step(tiny_tokenizer, tiny_model):
    """The distribution recorded while decoding equals a separate forward over prompt + completion up
    to `<rate>`, and no such forward runs (every call after the prefill is one token wide)."""
    model = ScriptedLM(tiny_model, tiny_tokenizer, None)  # the tiny model's own logits at the rating
    ids, mask = _prompts(tiny_tokenizer)
    cfg = DecodeConfig("expected", max_new_tokens=64)
    decoded = decode_batch(model, tiny_tokenizer, prompt_batch(ids, mask), cfg, PAPER)
    assert model.calls[0] == ids.shape[1] and set(model.calls[1:]) == {1}
    head = tiny_tokenizer.encode(SCRIPT[:RATE_AT], add_special_tokens=False)
    logits = decoding.last_logits(tiny_model, [ids[0].tolist() + head], tiny_tokenizer.pad_token_id, ids.device)
    want, mass = expected_from_logits(logits[0], rating_candidates(tiny_tokenizer, SCALES["1-5"]))
    for d in decoded:
        assert d.completions[0].startswith(SCRIPT[:RATE_AT]) and d.rate_mass is not None
        assert d.prediction == pytest.approx(want, abs=1e-5) and d.rate_mass == pytest.approx(mass, rel=1e-4)
        assert d.prediction != 4.0  # the expectation, not the greedy "4"


def test_expected_decoding_with_the_tag_in_the_response_prefix(tiny_tokenizer, tiny_model):
    """The prompt already ends with `<rate>` (prefix): the prompt alone is the context."""
    model = ScriptedLM(tiny_model, tiny_tokenizer, {_tok(tiny_tokenizer, "2"): 0.5, _tok(tiny_tokenizer, "3"): 0.5})
    ids, mask = _prompts(tiny_tokenizer, 1)
    prefix = SCRIPT[:RATE_AT]
    ids = torch.cat([ids, torch.tensor([tiny_tokenizer.encode(prefix, add_special_tokens=False)])], dim=1)
    mask = torch.ones_like(ids)
    model.rate_index = 0  # the prompt ends where SCRIPT's `<rate>` ends
    model.script = [0] + tiny_tokenizer.encode(SCRIPT[RATE_AT + 1 :], add_special_tokens=False)
    (d,) = decode_expected(model, tiny_tokenizer, ids, mask, prefix)
    assert d.prediction == pytest.approx(2.5) and d.rate_mass == pytest.approx(1.0)


def test_expected_without_rate_tag_keeps_the_greedy_parse(tiny_tokenizer, tiny_model):
    script = "<analyze user>no rating here</analyze user>"
    model = ScriptedLM(tiny_model, tiny_tokenizer, {}, script=script)
    ids, mask = _prompts(tiny_tokenizer, 1)
    (d,) = decode_expected(model, tiny_tokenizer, ids, mask)
    assert d.completions == [script] and d.prediction is None and d.rate_mass is None


# -- self-consistency ---------------------------------------------------------------------------
def test_mean_rating_ignores_unparsable_and_out_of_scale():
    scale = SCALES["1-5"]
    assert mean_rating([3.0, None, 5.0, 9.0], scale) == 4.0
    assert mean_rating([None, None], scale) is None and mean_rating([7.0], scale) is None


def test_self_consistency_averages_the_parsable_samples(tiny_tokenizer, tiny_model):
    probs = {_tok(tiny_tokenizer, "3"): 0.4, _tok(tiny_tokenizer, "5"): 0.4, _tok(tiny_tokenizer, "a"): 0.2}
    model = ScriptedLM(tiny_model, tiny_tokenizer, probs)
    ids, mask = _prompts(tiny_tokenizer, 2)
    cfg = DecodeConfig("self_consistency", max_new_tokens=64, samples=8, temperature=1.0)
    out = decode_batch(
        model,
        tiny_tokenizer,
        prompt_batch(ids, mask, SCALES["1-5"]),
        cfg,
        PAPER,
        generator=torch.Generator().manual_seed(0),
    )
    seen = set()
    for d in out:
        assert len(d.completions) == 8
        parsed = [answers.parse_rating(t) for t in d.completions]
        assert parsed == d.parsed and set(parsed) <= {3.0, 5.0, None}
        valid = [p for p in parsed if p is not None]
        assert d.prediction == pytest.approx(sum(valid) / len(valid))
        seen |= set(parsed)
    assert seen == {3.0, 5.0, None}  # all three outcomes were drawn (seeded)
    # every sample unparsable -> None (the caller's fallback)
    model = ScriptedLM(tiny_model, tiny_tokenizer, {_tok(tiny_tokenizer, "a"): 1.0})
    (d,) = decode_batch(model, tiny_tokenizer, prompt_batch(ids[:1], mask[:1], SCALES["1-5"]), cfg, PAPER)
    assert d.prediction is None and d.parsed == [None] * 8


# -- metrics and fallbacks through evaluate -----------------------------------------------------
def test_evaluate_counts_every_unparsable_answer_with_its_fallback(tmp_path, tiny_tokenizer, tiny_model):
    dm = tiny_data(tmp_path)
    result = evaluate(
        tiny_model, tiny_tokenizer, dm, PAPER, "validation", DecodeConfig(max_new_tokens=3), progress=False
    )
    assert len(result.rows) == 6
    assert all(r.decoded.prediction is None for r in result.rows)  # 3 random tokens never hold a rating block
    summary = summarize(result, name="tiny", split="validation", decoding={"mode": "greedy"}, data={"name": "syn"})
    m = summary["metrics"]
    assert m["parse_rate"] == 0 and m["fallbacks"] == 6 and m["format_rate"] == 0
    by_hand = sum(abs(r.fallback - r.target) for r in result.rows) / 6
    assert m["mae"] == pytest.approx(by_hand)
    assert m["exact_rate"] == 0 and m["within_1"] == 0  # a fallback never counts as a hit
    for r in result.rows:  # the fallback is the user's earlier average, clipped
        pos = next(p for p in dm.positions("validation") if dm.sample_key(p) == r.key)
        assert r.fallback == pytest.approx(min(max(dm.table.user_avg[pos], 1.0), 5.0))
    assert sum(v["n"] for v in summary["mae_by_history_len"].values()) == 6


def test_evaluate_expected_mode_end_to_end(tmp_path, tiny_tokenizer, tiny_model):
    probs = {"3": 0.16, "4": 0.3, " 4": 0.1, "5": 0.24, "a": 0.2}
    model = ScriptedLM(tiny_model, tiny_tokenizer, {_tok(tiny_tokenizer, t): p for t, p in probs.items()})
    dm = tiny_data(tmp_path)
    cfg = DecodeConfig("expected", max_new_tokens=64)
    result = evaluate(model, tiny_tokenizer, dm, PAPER, "test", cfg, limit=4, batch_size=3, progress=False)
    assert [r.decoded.prediction for r in result.rows] == pytest.approx([4.1] * 4)
    summary = summarize(result, name="scripted", split="test", decoding={"mode": "expected"}, data={})
    assert summary["metrics"]["mae"] == pytest.approx(sum(abs(4.1 - r.target) for r in result.rows) / 4)
    assert summary["metrics"]["parse_rate"] == 1 and summary["metrics"]["format_rate"] == 1
    assert summary["metrics"]["rate_mass_mean"] == pytest.approx(0.8)
    assert summary["expected_values"] == [1, 2, 3, 4, 5]
    assert summary["evaluated"] == 4 and summary["split_size"] == 6


def test_summary_of_a_mixed_run_by_hand():
    def row(key, target, pred, fallback, ok):
        return SampleResult(key, "u", "i", target, fallback, 6, 3, Decoded(pred, ["x"], [pred], [ok], [True]))

    rows = [row("a", 4.0, 4.0, 3.0, True), row("b", 2.0, 3.0, 3.0, True), row("c", 5.0, None, 3.5, False)]
    summary = summarize(EvalResult(rows, 10, 1.0, SCALES["1-5"]), name="m", split="test", decoding={}, data={})
    m = summary["metrics"]
    assert m["count"] == 3 and m["parsed"] == 2 and m["fallbacks"] == 1
    assert m["mae"] == pytest.approx((0 + 1 + 1.5) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 2.25) / 3))
    assert m["parse_rate"] == pytest.approx(2 / 3) and m["format_rate"] == pytest.approx(2 / 3)
    assert m["exact_rate"] == pytest.approx(1 / 3) and m["within_1"] == pytest.approx(2 / 3)
    assert summary["mae_by_target"] == {"2": 1.0, "4": 0.0, "5": 1.5}
    assert summary["sample_keys"] == ["a", "b", "c"]


# -- checkpoints ----------------------------------------------------------------------------------
def _checkpoint(policy, path, extra=None):
    state = {f"policy.{n}": p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    torch.save({"state_dict": state, "global_step": 7, **(extra or {})}, path)


def test_checkpoint_weights_load_and_give_the_same_logits(tmp_path, tiny_model_dir):
    from reczero.policy.factory import PolicyConfig, build_policy

    cfg = PolicyConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8)
    trained = perturb_lora(build_policy(cfg), scale=0.2).eval()
    # hyper-parameters as plain Lightning stores them (a dataclass): loads only with trust_pickle
    _checkpoint(trained, tmp_path / "last.ckpt", {"hyper_parameters": {"policy": cfg}})
    fresh = build_policy(cfg).eval()
    ids = torch.tensor([[5, 40, 99, 7, 300]])
    assert not torch.allclose(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)
    with pytest.raises(ValueError, match="pickled Python objects.*--trust-pickle"):
        load_checkpoint_weights(fresh, tmp_path / "last.ckpt")
    n = load_checkpoint_weights(fresh, tmp_path / "last.ckpt", trust_pickle=True)
    assert n == sum(1 for name, _ in trained.named_parameters() if "lora_" in name)
    torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits)


def test_checkpoint_written_by_the_lightning_module_loads(tmp_path, tiny_model_dir):
    """The real format: GRPOModule.on_save_checkpoint (adapter-only state_dict) -> load_checkpoint_weights."""
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.factory import PolicyConfig, build_policy

    cfg = PolicyConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8)
    module = GRPOModule(policy=cfg)
    module.configure_model()
    perturb_lora(module.policy, scale=0.2)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all(".lora_" in k for k in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "step.ckpt")
    fresh = build_policy(cfg).eval()
    load_checkpoint_weights(fresh, tmp_path / "step.ckpt")
    ids = torch.tensor([[5, 40, 99, 7, 300]])
    torch.testing.assert_close(fresh(input_ids=ids).logits, module.policy.eval()(input_ids=ids).logits)


def test_checkpoint_of_another_rank_or_a_partial_one_is_refused(tmp_path, tiny_model_dir):
    from reczero.policy.factory import PolicyConfig, build_policy

    _checkpoint(build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=8)), tmp_path / "r8.ckpt")
    policy = build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=4))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint_weights(policy, tmp_path / "r8.ckpt")
    partial = build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=4, target_modules=["q_proj"]))
    _checkpoint(partial, tmp_path / "q.ckpt")
    with pytest.raises(ValueError, match="LoRA weights missing"):
        load_checkpoint_weights(policy, tmp_path / "q.ckpt")
    torch.save({"epoch": 1}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_checkpoint_weights(policy, tmp_path / "bad.ckpt")


# -- the commands ---------------------------------------------------------------------------------
DATA_SECTION = {
    "source": {"format": "synthetic", "synthetic_users": 30, "synthetic_items": 20, "synthetic_ratings_per_user": 8},
    "samples": {"user_history": 3, "item_history": 3, "min_history": 2, "max_samples": {"validation": 5, "test": 5}},
    "prompt": {"max_prompt_tokens": 2048},
    "eval_batch_size": 4,
}


def test_evaluate_command_with_a_fit_config_and_a_checkpoint(tmp_path, tiny_model_dir):
    from reczero.cli import main
    from reczero.policy.factory import PolicyConfig, build_policy

    policy = {"model": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8}
    config = {
        "model": {
            "class_path": "reczero.modules.GRPOModule",
            "init_args": {"policy": policy, "val_max_new_tokens": 6},
        },
        "data": {**DATA_SECTION, "cache_dir": str(tmp_path / "cache")},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    _checkpoint(perturb_lora(build_policy(PolicyConfig(**policy))), tmp_path / "step.ckpt")
    out = tmp_path / "eval" / "preds.jsonl"
    args = [
        "evaluate",
        "--config",
        str(tmp_path / "fit.yaml"),
        "--ckpt",
        str(tmp_path / "step.ckpt"),
        "--split",
        "validation",
    ]
    summary = main([*args, "--limit", "3", "--output", str(out), "--no-progress"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and summary["evaluated"] == 3 and summary["split_size"] == 5
    for row in lines:
        assert {"key", "user", "item", "target", "prediction", "fallback", "fallback_used", "history_len"} <= set(row)
        assert row["fallback_used"] == (row["prediction"] is None)
    saved = json.loads((tmp_path / "eval" / "preds.metrics.json").read_text())
    assert saved["kind"] == "evaluate" and saved["name"] == "ckpt:" + tmp_path.name + "/step"
    assert saved["decoding"]["max_new_tokens"] == 6  # from model.init_args.val_max_new_tokens
    assert saved["predictions_file"] == "preds.jsonl" and saved["sample_keys"] == [r["key"] for r in lines]
    assert "user's average" in saved["fallback"]


def test_baselines_command_on_a_small_synthetic_set(tmp_path, capsys):
    from reczero.cli import main

    data = [f"--data.cache_dir={tmp_path / 'cache'}", "--data.source.synthetic_users=40"]
    out = main(
        [
            "baselines",
            *data,
            "--methods",
            "global_mean",
            "user_mean",
            "bias_baseline",
            "--output",
            str(tmp_path / "b.json"),
        ]
    )
    printed = capsys.readouterr().out
    assert "| bias_baseline |" in printed and "leave-last" in printed
    saved = json.loads((tmp_path / "b.json").read_text())
    names = [r["name"] for r in saved["results"]]
    fitted = ["global_mean", "user_mean", "bias_baseline"]  # the --methods asked for, then the prompt's own
    shown = ["user_mean_shown", "item_mean_shown", "bias_shown", "teacher_rule"]
    rounded = [f"{n} (rounded)" for n in fitted + shown if n != "teacher_rule"]  # the rule already rounds
    assert saved["kind"] == "baselines" and names == fitted + shown + rounded
    dm = RatingDataModule(source=SourceConfig(synthetic_users=40), cache_dir=str(tmp_path / "cache"))
    dm.setup()
    train = [s for s in assign_splits(dm.data, dm.sample_config) if s == "train"]
    valid_rows = [s for s in assign_splits(dm.data, dm.sample_config) if s == "validation"]
    assert saved["counts"] == {
        "train": len(train),
        "refit": len(train) + len(valid_rows),  # leave_last refits on every row but the test ones
        "validation": len(dm.positions("validation")),
        "test": len(dm.positions("test")),
    }
    assert saved["samples"]["test"]["keys"] == [dm.sample_key(p) for p in dm.positions("test")]
    # global mean: the train mean on validation, the train + validation mean on test
    rows = dm.data.interactions
    train_mean = sum(r.rating for r, s in zip(rows, assign_splits(dm.data, dm.sample_config)) if s == "train") / len(
        train
    )
    gm = saved["results"][0]
    assert gm["valid_pred"][0] == pytest.approx(min(max(train_mean, 1), 5), abs=1e-4)
    truth = saved["samples"]["test"]["truth"]
    assert gm["test_mae"] == pytest.approx(
        sum(abs(p - t) for p, t in zip(gm["test_pred"], truth)) / len(truth), abs=1e-3
    )
    assert out["counts"] == saved["counts"]


def test_decode_config_rejects_bad_values():
    with pytest.raises(ValueError, match="decode.mode must be one of"):
        DecodeConfig("beam")
    with pytest.raises(ValueError, match="temperature > 0"):
        DecodeConfig("self_consistency", temperature=0)
    assert decoding.DecodeConfig().sampling(rewards.get_template("answer_only")).stop_strings == ("</answer>",)


def test_rate_context_cuts_on_the_models_own_token_boundary(tiny_tokenizer):
    enc = lambda text: tiny_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    head = "<match>fits</match><rate>"
    # " 4" is one token here: the cut after "<rate> " is not a boundary, the one after "<rate>" is
    text = head + " 4</rate>"
    ctx, found = decoding._rate_context(enc(text), text, "", tiny_tokenizer, "<rate>")
    assert found and ctx == enc(head)
    # "\n" is its own token: the whitespace the model wrote stays in the context
    text = head + "\n4</rate>"
    ctx, _ = decoding._rate_context(enc(text), text, "", tiny_tokenizer, "<rate>")
    assert ctx == enc(head + "\n")
    # the LAST tag counts; with the response prefix in front
    text = "x</analyze user><rate>3</rate><rate>4</rate>"
    ctx, _ = decoding._rate_context(enc(text), text, "<analyze user>", tiny_tokenizer, "<rate>")
    assert tiny_tokenizer.decode(ctx) == "x</analyze user><rate>3</rate><rate>"
    assert decoding._rate_context(enc("no tag"), "no tag", "", tiny_tokenizer, "<rate>") == (None, False)


def test_ckpt_of_a_reference_sft_run_evaluates_like_its_saved_adapter(tmp_path, tiny_model_dir):
    """A `reference: sft` run trains a LoRA on top of the SFT adapter merged into the base: `--ckpt` must
    build that policy (not the SFT adapter with the GRPO weights poured over it) and so give the same
    answers as the stacked adapter the run saved."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from reczero.cli import main
    from reczero.modules.checkpointing import AtomicCheckpointIO
    from reczero.modules.grpo_module import GRPOModule
    from reczero.policy.adapters import save_adapter
    from reczero.policy.factory import PolicyConfig, build_policy
    from reczero.policy.loading import load_model
    from reczero.rollout.record import RolloutConfig

    sft = save_adapter(perturb_lora(build_policy(PolicyConfig(model=str(tiny_model_dir), lora_r=4))), tmp_path / "sft")
    policy = {"model": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8, "adapter_path": str(sft)}
    prompt = {"max_prompt_tokens": 1536, "response_prefix": "<analyze user>"}
    module = GRPOModule(
        policy=PolicyConfig(**policy),
        prompt=PromptConfig(**prompt),
        reference="sft",
        rollout=RolloutConfig(group_size=4, max_new_tokens=8),
        reward=rewards.RewardSpec(format_shaping=0.9),
        learning_rate=5e-2,
        adapter_dir=str(tmp_path / "run" / "adapter"),
    )
    data = RatingDataModule(
        source=SourceConfig(**DATA_SECTION["source"]),
        samples=SampleConfig(**DATA_SECTION["samples"]),
        prompt=PromptConfig(**prompt),
        tokenizer=str(tiny_model_dir),
        batch_size=1,
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, num_sanity_val_steps=0, limit_val_batches=0,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(dirpath=tmp_path / "run", save_last=True)],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    cfg = PolicyConfig(**policy)
    ids = torch.tensor([[5, 40, 99, 7, 300, 12]])
    from_ckpt, _, _ = load_model(cfg, ckpt=str(tmp_path / "run" / "last.ckpt"))
    from_adapter, _, _ = load_model(cfg, adapter=str(tmp_path / "run" / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(input_ids=ids).logits, from_adapter(input_ids=ids).logits)

    config = {"model": {"class_path": "reczero.modules.GRPOModule", "init_args": {"policy": policy}}}
    config["data"] = {**DATA_SECTION, "cache_dir": str(tmp_path / "cache"), "prompt": prompt}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    outputs = []
    for source in (["--ckpt", str(tmp_path / "run" / "last.ckpt")], ["--adapter", str(tmp_path / "run" / "adapter")]):
        out = tmp_path / f"{source[0][2:]}.jsonl"
        args = ["evaluate", "--config", str(tmp_path / "fit.yaml"), *source, "--split", "validation"]
        args += ["--decode.max_new_tokens", "12"]
        main([*args, "--output", str(out), "--no-progress"])
        outputs.append([(r["prediction"], r["completion"]) for r in map(json.loads, out.read_text().splitlines())])
    assert outputs[0] == outputs[1]
