"""Placeholder: filled in by the shufflenetv2 reference layout."""
ARCHS = {}
