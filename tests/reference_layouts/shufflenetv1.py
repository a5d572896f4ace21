"""Placeholder: filled in by the shufflenetv1 reference layout."""
ARCHS = {}
