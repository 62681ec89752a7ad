"""ELASTIC model core in plain torch (no Lightning): config, encoders, losses, serving state."""
from .config import ModelConfig
from .recommender import SequentialRecommender, state_bytes
from .registry import ENCODERS, LOSSES

__all__ = ["ENCODERS", "LOSSES", "ModelConfig", "SequentialRecommender", "state_bytes"]
