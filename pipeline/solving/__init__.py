"""How a solve runs its layers, for any registered method: from the correlation store (``layers.py``), with
statistics recaptured on the compressed layers below (``sequential.py``, the sequential calibration runner), or
as every candidate plan of allocation=validated scored on held-out text (``validated.py``). The stage plans, picks
one of these, and writes the manifest; the methods say what one layer is.
"""
