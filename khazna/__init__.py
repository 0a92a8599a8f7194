"""Khazna: a self-hostable sovereign data hub."""

__version__ = "0.1.0"

from khazna.client import Client, KhaznaClientError

__all__ = ["Client", "KhaznaClientError", "__version__"]
