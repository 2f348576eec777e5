"""Turn detection: whether a user has finished speaking (Smart Turn v3.2)."""

from .features import WINDOW_S, turn_features
from .smart_turn import SmartTurn, TurnResult

__all__ = ["WINDOW_S", "SmartTurn", "TurnResult", "turn_features"]
