"""Splitwise agents package."""
