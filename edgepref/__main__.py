"""`python -m edgepref` is the `edgepref` command."""

from .ui.cli import main

main()
