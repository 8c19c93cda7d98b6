"""Capture: per-layer FP64 activation statistics of the dense model, stored in a Zarr v3 store."""

from .stats import OPTIONAL_STATS, STAT_NAMES, LayerStats, LayerStatsCollector, stat_shapes
from .store import CorrelationStore, LayerWriter

__all__ = [
    "OPTIONAL_STATS", "STAT_NAMES", "CorrelationStore", "LayerStats", "LayerStatsCollector", "LayerWriter",
    "stat_shapes",
]
