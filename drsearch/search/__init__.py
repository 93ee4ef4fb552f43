"""The search layer: Optuna studies whose trials run the trainer, in-process or on Ray Tune.

``runners.run_study`` runs a study to its budget; ``trial`` holds the typed epoch reports and
the one rule for a trial's end; ``objective`` the medical-grade score; ``worker`` runs one
trial; ``store`` and ``database`` keep the study (the budget, claims under a lock, idempotent
writes); ``samplers``, ``checks``, ``smoke``, ``export`` and ``annotations`` do what they say.
"""
