"""``python -m kesd``: the `kes` command line."""

from kesd.cli.kes import main

main()
