"""Launchers and torch ops, one module per kernel family group."""
