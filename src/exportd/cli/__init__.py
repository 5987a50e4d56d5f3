"""The surfaces a person types at: the `exportd` command line (`commands`), the Python
client it is built on (`client`) and the demo's data (`demo`). Top of the layer stack:
nothing in exportd imports from here."""

from exportd.cli.commands import main

__all__ = ["main"]
