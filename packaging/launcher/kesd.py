"""The kesd daemon as the launcher runs it: ``python3 -I`` this file (see kesd-launcher.c)."""

from kesd.cli.kesd import main

main(prog_name="kesd")
