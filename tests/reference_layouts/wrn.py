"""Placeholder: filled in by the wrn reference layout."""
ARCHS = {}
