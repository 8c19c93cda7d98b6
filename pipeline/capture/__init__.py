"""Capture: per-layer FP64 activation statistics of the dense model, stored in a Zarr v3 store."""

from .stats import (
    FISHER_STATS,
    OPTIONAL_STATS,
    STAT_NAMES,
    LayerStats,
    LayerStatsCollector,
    fisher_mixed,
    stat_shapes,
)
from .store import CorrelationStore, LayerWriter

__all__ = [
    "FISHER_STATS", "OPTIONAL_STATS", "STAT_NAMES", "CorrelationStore", "LayerStats", "LayerStatsCollector",
    "LayerWriter", "fisher_mixed", "stat_shapes",
]
