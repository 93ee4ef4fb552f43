"""Datasets: every layout a recipe can name (``adapters``), combined sources, the split,
content ids, fundus preprocessing, the decode-once cache, the synthetic set, ``describe``."""
