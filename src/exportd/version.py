"""exportd's version, in a module of its own so that any layer may read it (the package
itself re-exports it, with the client)."""

__version__ = "0.1.0"
