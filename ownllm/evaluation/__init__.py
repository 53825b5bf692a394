"""Evaluation: metrics and the before/after report card."""
