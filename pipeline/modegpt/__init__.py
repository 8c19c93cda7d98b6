"""MoDeGPT's pure-math core: per-module solvers (Types I–III), sparsity allocation and baselines.

Weights use the "X W" layout (W is [in, out]); everything is computed in FP64 on the inputs' device.
"""

from pipeline.modegpt._linalg import F64
from pipeline.modegpt.allocation import bi_sparsity, kept_dim, uniform_sparsity
from pipeline.modegpt.baselines import (
    output_error,
    random_mlp_selection,
    svd_rank_for_sparsity,
    truncated_svd,
    whitened_truncated_svd,
    whitening_roots,
)
from pipeline.modegpt.budget import ModuleCurve, allocate_widths
from pipeline.modegpt.error_curves import (
    head_output_energy,
    nested_mlp_residuals,
    qk_error_curve,
    vo_rank_residuals,
)
from pipeline.modegpt.mlp import (
    REFITS,
    MlpSolution,
    leverage_keep_order,
    mlp_residual,
    nystrom_mlp,
    nystrom_update,
    ridge_leverage_scores,
)
from pipeline.modegpt.qk import cr_select, qk_residual, rope_frequency_index
from pipeline.modegpt.vo import VoSolution, fold_value_bias, vo_residual, vo_svd

__all__ = [
    "F64",
    "REFITS",
    "MlpSolution",
    "ModuleCurve",
    "allocate_widths",
    "head_output_energy",
    "leverage_keep_order",
    "nested_mlp_residuals",
    "qk_error_curve",
    "vo_rank_residuals",
    "VoSolution",
    "bi_sparsity",
    "cr_select",
    "fold_value_bias",
    "kept_dim",
    "mlp_residual",
    "nystrom_mlp",
    "nystrom_update",
    "output_error",
    "qk_residual",
    "random_mlp_selection",
    "ridge_leverage_scores",
    "rope_frequency_index",
    "svd_rank_for_sparsity",
    "truncated_svd",
    "uniform_sparsity",
    "vo_residual",
    "vo_svd",
    "whitened_truncated_svd",
    "whitening_roots",
]
