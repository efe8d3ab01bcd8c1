"""LightningModules: `GRPOModule` (RecZero) and `SFTModule` (RecOne's cold start) on one shared policy."""

from reczero.modules.grpo_module import GRPOModule

__all__ = ["GRPOModule"]
