"""Placeholder: filled in by the vgg reference layout."""
ARCHS = {}
