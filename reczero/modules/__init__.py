"""Lightning glue: `GRPOModule` (RecZero) and `SFTModule` (RecOne's cold start) on one shared policy (`base`),
the rollout callback (`rollout_callback`) and the atomic checkpoint plugin with RNG capture (`checkpointing`)."""

from reczero.modules.grpo_module import GRPOModule
from reczero.modules.sft_module import SFTModule

__all__ = ["GRPOModule", "SFTModule"]
