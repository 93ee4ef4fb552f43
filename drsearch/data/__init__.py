"""Datasets: every layout a recipe can name (``adapters``), combined sources, the split,
content ids, reading image files (``decode``), fundus preprocessing, the decode-once cache,
the flags of images not to grade (``quality``), the synthetic set, ``describe``."""
