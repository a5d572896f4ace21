"""Placeholder: filled in by the mobilenetv2 reference layout."""
ARCHS = {}
