"""The ``tgraph`` command line: a thin shell over the Python API.

``app`` holds the command group (errors become one line on stderr, exit 1, or 2 for usage
errors; ``--debug`` shows the traceback instead) and the shared helpers; the commands live
in ``commands`` (dump, compile, run, diff, passes), ``generate_cmd``, ``bench_cmd`` and ``debug_cmd`` (bisect,
replay); ``checkpoints`` loads any CHECKPOINT, ``npz_io`` reads and writes .npz files.
``main`` is the console-script entry point.
"""

from tgraph.cli import bench_cmd, commands, debug_cmd, generate_cmd  # noqa: F401  (registers the commands)
from tgraph.cli.app import main

__all__ = ["main"]
