"""Explanations of what a network learned: plots now; sigma estimation, knowledge metrics, CAMs later."""
