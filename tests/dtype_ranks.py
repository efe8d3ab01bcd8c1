"""One rank of a 2-process gloo group whose CPUs disagree: each rank reads its own simulated /proc/cpuinfo,
builds the GRPO policy the way `configure_model` does under DDP, and records what it computes in.

`tests/test_dtype_record.py` starts two of these (ranks 0 and 1, each with a different cpuinfo file),
once per pairing, and checks that both ranks built the policy in rank 0's dtype.

    python tests/dtype_ranks.py RANK INIT_FILE MODEL_DIR OUT_DIR CPUINFO_0 [CPUINFO_1 ...]

For each CPUINFO this rank is given (one per scenario), it builds the policy once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]  # this checkout's reczero

from reczero.modules.grpo_module import GRPOModule  # noqa: E402
from reczero.policy import precision  # noqa: E402
from reczero.policy.factory import PolicyConfig  # noqa: E402


def main(rank: int, init_file: str, model_dir: str, out: Path, cpuinfos: list[str]) -> None:
    os.environ.pop(precision.PIN_VARIABLE, None)  # the rule itself decides here, not the tests' pin
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results = []
    for cpuinfo in cpuinfos:
        precision.CPUINFO = Path(cpuinfo)
        module = GRPOModule(policy=PolicyConfig(model=model_dir, lora_r=4, lora_alpha=8))
        module.configure_model()
        frozen = {str(p.dtype) for p in module.policy.parameters() if not p.requires_grad}
        results.append(
            {
                "own_rule": precision.dtype_name(precision.cpu_choice().dtype),
                "config": module.policy_config.dtype,
                "hparams": module.hparams.policy.dtype,
                "frozen": sorted(frozen),
            }
        )
    torch.distributed.destroy_process_group()
    (out / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5:])
