"""Hyperparameter search over spec fields: a search file (:mod:`.schema`, loaded and checked
by :mod:`.load`) drives an Optuna study (:mod:`.engine`) whose trials train specs; the results
(:mod:`.report`) and DVC experiments (:mod:`.experiments`) are written beside it."""
