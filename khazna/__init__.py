"""Khazna: a self-hostable sovereign data hub."""

__version__ = "0.1.0"

__all__ = ["__version__"]
