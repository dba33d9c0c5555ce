"""`python -m edgepref` is the `edgepref` command."""

from .cli import main

main()
