"""Experiments: studies and analyses built on every layer below (nothing below imports them)."""
