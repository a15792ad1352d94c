"""Splitwise bridge package."""
