"""RecOne's cold start: reasoning traces for SFT before GRPO.

`traces` (the trace JSONL format, its validation, the hint-leak filter), `coldstart` (the
`reczero coldstart` command: traces from a teacher, kept only when they pass), `teacher` (the
rule-based teacher, `--teacher template`).
"""
