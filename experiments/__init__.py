"""Splitwise experiments package."""
