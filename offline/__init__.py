"""Batch side: reading the archive, training sets, retraining, evaluation."""
