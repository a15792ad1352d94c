"""Splitwise lyapunov package."""
