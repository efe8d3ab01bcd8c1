"""Rollouts: sampling completions from the policy and scoring them.

`engine` (batched sampling with a shared prompt prefill) and `kv_cache` (its in-place KV cache),
`merge` (the LoRA folded into the weights while sampling), `record` (the scored `RolloutRecord`).
"""
