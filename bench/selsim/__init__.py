"""The selection simulation behind ``bench/selection.py``: populations of configurations and
their training noise (``populations``), the objective on many confusion matrices at once
(``scoring``) and one simulated study under every rule (``study``)."""
