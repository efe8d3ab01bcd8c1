"""The reward ablations train through `reczero fit`: the prompt's skeleton, its one-shot example and the
sampling stop strings follow the reward template, so a passing answer in that template scores above
the format penalty, end to end (prompt batch from the DataModule -> completion -> record -> reward)."""

from __future__ import annotations

import lightning as L
import pytest
from tiny import scripted_generation, synthetic_data

from reczero import answers, prompts, rationales, rewards
from reczero.data.batching import scale_of
from reczero.data.render import PromptConfig
from reczero.modules.grpo_module import GRPOModule
from reczero.modules.rollout_callback import RolloutCallback
from reczero.policy.factory import PolicyConfig
from reczero.rollout.record import RolloutConfig, record_from_generation

# a passing answer per template: its own words (not the prompt's example or hints), a rating in scale
PASSING = {
    "four_step": "<analyze user>Rates dramas well above the rest.</analyze user><analyze item>A slow war drama."
    "</analyze item><match>The genre suits this user.</match><rate>4</rate>",
    "think_answer": "<think>Rates dramas well above the rest; a slow war drama suits this user.</think><answer>4</answer>",
    "answer_only": "<answer>4</answer>",
}
OTHER_TAGS = {"four_step": "<answer>", "think_answer": "<analyze user>", "answer_only": "<think>"}


class _Answer(RolloutCallback):
    """Each completion is the template's passing answer; keeps the prompt text and the scored record."""

    seen: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        template = pl_module.reward_spec.template
        texts = [PASSING[template]] * (batch["input_ids"].shape[0] * self.cfg.group_size)
        gen = scripted_generation(pl_module.tokenizer, texts, [True] * len(texts))
        record = record_from_generation(
            batch, gen, self.cfg, self.spec, scale_of(batch), pl_module.prompt.response_prefix
        )
        prompt = pl_module.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
        _Answer.seen[template] = (prompt, record, self.cfg.stop_strings)
        pl_module.rollout = record


class _AnswerGRPO(GRPOModule):
    def configure_callbacks(self):
        return [_Answer(self.rollout_config, self.reward_spec)]


def _fit(tmp_path, model_dir, template: str) -> None:
    prompt = PromptConfig(max_prompt_tokens=1536, answer_example=True, template=template)
    data = synthetic_data(model_dir, prompt, tmp_path / "cache")
    module = _AnswerGRPO(
        policy=PolicyConfig(model=str(model_dir), lora_r=4, lora_alpha=8),
        prompt=prompt,
        rollout=RolloutConfig(group_size=2, max_new_tokens=8),
        reward=rewards.RewardSpec(template=template),
        micro_batch_size=2,
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)


@pytest.mark.parametrize("template", sorted(answers.TEMPLATES))
def test_a_passing_answer_of_each_template_scores_above_the_penalty(tmp_path, tiny_model_dir, template):
    _fit(tmp_path, tiny_model_dir, template)
    prompt, record, stops = _Answer.seen[template]
    tags = rewards.get_template(template).tags
    assert prompts.answer_format(_scale(), tags) in prompt
    assert OTHER_TAGS[template] not in prompt, "the prompt asks for another template's tags"
    assert stops == rewards.get_template(template).stop_strings == (f"</{tags[-1]}>",)
    assert bool(record.format_ok.all()) and not bool(record.copied.any())
    assert float(record.rewards.min()) > rewards.RewardSpec(template=template).format_penalty


def _scale():
    from reczero.scale import SCALES

    return SCALES["1-5"]


def test_one_shot_example_follows_the_template():
    scale = _scale()
    example = rationales.example_answer("u|i|1", scale, 3.5)
    for name, template in answers.TEMPLATES.items():
        shown = prompts.in_template(example, template.tags)
        assert rewards.check_format(shown, scale, name).ok, name
        assert answers.parse_rating(shown, template.rating_tag) == answers.parse_rating(example)
        if len(template.tags) > 1:  # a copy of the example's reasoning is caught in every template that has some
            sources = prompts.copy_sources(scale, shown, template.tags)
            reason = rewards.check_format(shown, scale, name, copy_sources=sources).reason
            assert reason.startswith("copied_block:"), (name, reason)


def test_a_response_prefix_of_another_template_is_refused():
    with pytest.raises(ValueError, match=r"response_prefix='<analyze user>'.*'think_answer'.*'<think>'"):
        PromptConfig(template="think_answer", response_prefix="<analyze user>")
    assert PromptConfig(template="think_answer", response_prefix="<think>").response_prefix == "<think>"


def test_a_reward_of_another_template_than_the_prompt_is_refused():
    with pytest.raises(ValueError, match=r"prompt asks for the 'four_step'.*reward scores 'answer_only'"):
        GRPOModule(reward=rewards.RewardSpec(template="answer_only"))


def test_stop_strings_set_by_hand_must_end_the_template():
    answer_only = {
        "reward": rewards.RewardSpec(template="answer_only"),
        "prompt": PromptConfig(template="answer_only"),
    }
    with pytest.raises(ValueError, match="lack.*</answer>"):
        GRPOModule(**answer_only, rollout=RolloutConfig(stop_strings=("</x>",)))
    module = GRPOModule(**answer_only)
    assert module.rollout_config.stop_strings == ("</answer>",)
