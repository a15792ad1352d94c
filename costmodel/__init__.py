"""Splitwise costmodel package."""
