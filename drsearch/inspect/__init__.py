"""Looking at results: ``report`` (a study as one HTML page), ``diagnose`` (what a run's
records say went wrong), ``lr`` (a recipe's schedule per parameter group) and ``dashboard``
(optuna-dashboard on a study). Reads what the trainer and the search layer wrote."""
