"""kesd: a KES-compatible key encryption server for Linux."""

__version__ = "0.1.0"
