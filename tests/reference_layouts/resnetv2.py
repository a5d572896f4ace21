"""Placeholder: filled in by the resnetv2 reference layout."""
ARCHS = {}
