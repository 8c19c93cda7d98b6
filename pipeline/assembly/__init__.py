"""Assembly: a compressed Hugging Face model from a dense one and per-layer solutions; saving, loading, registering.

The compressed classes themselves live in :mod:`pipeline.modeling` (self-contained, copied into checkpoints);
which class a family gets is its adapter's declaration. Importing this package registers every family's
classes with the Auto* factories, so saved checkpoints load without remote code where the project is installed.
"""

from .build import (
    COMPRESSED_CLASSES,
    build_compressed_model,
    compressed_bias_flags,
    compressed_config,
    count_parameters,
    expected_parameter_count,
    identity_solutions,
)
from .inplace import apply_solution_in_place
from .io import load_compressed, register_compressed_models, save_compressed

register_compressed_models()

__all__ = [
    "apply_solution_in_place",
    "COMPRESSED_CLASSES",
    "build_compressed_model",
    "compressed_bias_flags",
    "compressed_config",
    "count_parameters",
    "expected_parameter_count",
    "identity_solutions",
    "load_compressed",
    "register_compressed_models",
    "save_compressed",
]
