"""ELASTIC model core in plain torch (no Lightning): config, encoders, losses, serving state."""
from .config import ModelConfig
from .recommender import SequentialRecommender, state_bytes

__all__ = ["ModelConfig", "SequentialRecommender", "state_bytes"]
