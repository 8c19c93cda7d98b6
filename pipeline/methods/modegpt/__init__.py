"""MoDeGPT, one package: the method object (``method.py``, which the registry finds), its settings read from the
config by field name (``settings.py``), one layer's solve (``layer.py``), the module error curves (``curves.py``) and
the KL probe that scales them (``probe.py``; ``probe_by_noise.py`` is its reference estimator). The pure math on
tensors is ``pipeline.modegpt``; nothing outside this package knows MoDeGPT's settings or names.
"""

from .layer import DenseLayer, solve_modegpt_layer
from .method import ModeGPT
from .settings import CURVE_SCALES, ModegptSettings

__all__ = ["CURVE_SCALES", "DenseLayer", "ModeGPT", "ModegptSettings", "solve_modegpt_layer"]
