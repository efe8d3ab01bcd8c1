"""The rollout engine's greedy outputs stay those of the engine before the decoding rework (commit b097631).

`engine_reference.json` holds what that engine produced for the cases below (tokens, lengths, finished,
texts, and the watched rating distributions) with a seeded tiny Llama whose wider initialisation makes
it write varied text (and partial UTF-8 bytes), so EOS, stop strings and the watched tag land at
different steps in different rows. Rewrite it only on purpose: `python tests/test_engine_reference.py`.

Greedy decoding only: sampling now draws one number per row of the whole batch each step (so a row's
sample does not depend on when other rows stop), which the old engine did not.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from tiny import make_tiny_llama, make_tiny_tokenizer

from reczero.rollout.engine import SamplingConfig, Watch, generate

REFERENCE = Path(__file__).parent / "engine_reference.json"
PROMPTS = [
    "<|im_start|>user\nRate the film<|im_end|>\n<|im_start|>assistant\n",
    "Hi",
    "The user likes comedies and the item is a drama from 1995.",
    "<analyze user>",
    "4 </rate> 5",
    "Toy Story (1995): 5. GoldenEye",
]
# name -> generate arguments; stop strings and the watched tag were picked from the unstopped outputs
# so that they end rows at different steps, some across token boundaries
CASES = {
    "eos only": dict(stops=()),
    "stop strings": dict(stops=("oom", " 44", "user", "</")),
    "one-character stops": dict(stops=("5", "g")),
    "watch": dict(stops=("oom",), watch="81"),
    "three samples, shared prefix": dict(stops=("oom", " 44", "user"), samples=3, shared=True),
    "three samples, repeated cache": dict(stops=("oom", " 44", "user"), samples=3, shared=False),
    "concatenating cache": dict(stops=("oom", " 44"), inplace=False),
    "bf16": dict(stops=("oom", " 44", "user"), dtype="bfloat16"),
}


def run_case(case: dict) -> dict:
    """One case on a fresh tiny model -> a JSON-able record of the Generation."""
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_llama(tokenizer, initializer_range=0.2).to(getattr(torch, case.get("dtype", "float32")))
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=40, stop_strings=case["stops"])
    watch = None
    if "watch" in case:
        watch = Watch(case["watch"], torch.tensor([tokenizer.convert_tokens_to_ids(str(d)) for d in range(1, 6)]))
    gen = generate(
        model,
        tokenizer,
        enc.input_ids,
        enc.attention_mask,
        case.get("samples", 1),
        sampling,
        inplace_cache=case.get("inplace", True),
        watch=watch,
        shared_prefix=case.get("shared"),
    )
    out = {
        "tokens": [gen.tokens[i, : gen.lengths[i]].tolist() for i in range(len(gen.texts))],
        "lengths": gen.lengths.tolist(),
        "finished": gen.finished.tolist(),
        "texts": gen.texts,
    }
    if watch is not None:
        out["watched"] = [[None if math.isnan(p) else p for p in row] for row in gen.watched.tolist()]
        out["watched_at"] = gen.watched_at.tolist()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_outputs_match_the_reference_engine(name):
    want = json.loads(REFERENCE.read_text())[name]
    got = run_case(CASES[name])
    assert got == want


def test_the_reference_cases_end_rows_at_different_steps():
    """The cases exercise what they claim: stops at several steps, mid-way watched points."""
    reference = json.loads(REFERENCE.read_text())
    for name in ("stop strings", "one-character stops", "watch", "bf16"):
        lengths = reference[name]["lengths"]
        assert len(set(lengths)) >= 4, (name, lengths)
        assert any(reference[name]["finished"]), name
    assert sum(at > 0 for at in reference["watch"]["watched_at"]) >= 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    REFERENCE.write_text(json.dumps({name: run_case(case) for name, case in CASES.items()}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
