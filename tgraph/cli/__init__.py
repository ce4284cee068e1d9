"""The ``tgraph`` command line: commands, checkpoint loading and .npz input/output.

A thin shell over the Python API; ``main`` is the console-script entry point.
"""

from tgraph.cli.commands import main

__all__ = ["main"]
