"""exportd: an asynchronous data export service."""

__version__ = "0.1.0"
