"""Evaluation and serving: turning a policy into ratings, scoring them, and comparing with classical predictors.

`decoding` (greedy, expected and self-consistency ratings), `evaluate` (`reczero evaluate`),
`predict` (`reczero predict`: ratings for JSONL requests), `predictors` and `baselines` (classical
predictors and `reczero baselines`), `report` (`reczero report`: a markdown table and plots).
"""
