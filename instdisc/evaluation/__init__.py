"""Evaluation of an encoder and its index: pure metrics, baselines, the near-duplicate protocol,
the index's recall and speed, figures and the report (``scripts/evaluate.py`` runs it all)."""
