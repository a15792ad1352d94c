"""Splitwise proofs package."""
