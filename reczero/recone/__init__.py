"""RecOne's cold start: reasoning traces for SFT before GRPO.

`coldstart` (the `reczero coldstart` command: traces from a teacher, kept only when they pass; the
file format they are written in is `reczero.data.traces`), `hints` (the hint-leak filter of its hint
round), `teacher` (the rule teacher, `--teacher template`: the `reczero.rationales` rule that matches
the prompt style).
"""
