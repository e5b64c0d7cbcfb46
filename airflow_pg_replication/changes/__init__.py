"""Decoded changes -> the final state of each key in a batch: the reference and column-wise folds, typing."""
