"""Runnable examples and the example models they use."""
