"""``python -m tgraph`` runs the CLI."""

from tgraph.cli import main

main()
