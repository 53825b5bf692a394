"""Exports that prove themselves: every folder carries a manifest of checks passed."""
