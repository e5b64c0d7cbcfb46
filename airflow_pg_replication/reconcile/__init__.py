"""Reconciliation: key ranges on both sides and order-independent row hashes."""
