"""LightningModules: `GRPOModule` (RecZero) and `SFTModule` (RecOne's cold start) on one shared policy."""

from reczero.modules.grpo_module import GRPOModule
from reczero.modules.sft_module import SFTModule

__all__ = ["GRPOModule", "SFTModule"]
