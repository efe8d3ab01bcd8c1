"""The policy: a causal LM under a LoRA / QLoRA adapter, shared by SFT, GRPO, evaluation and serving.

`factory` (`PolicyConfig`, `build_policy`, the base model and tokenizer), `bundled` (the bundled
SmolLM2), `adapters` (save, load, stack, export), `forward` (the training log-probs), `loading`
(a model for evaluation: zero-shot, adapter or checkpoint).
"""
