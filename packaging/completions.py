"""Write the bash, zsh and fish completion scripts of kes, kesctl and kesd (run at package build time).

Usage: ``python3 packaging/completions.py OUTDIR`` writes ``OUTDIR/bash/kes``, ``OUTDIR/zsh/_kes``,
``OUTDIR/fish/kes.fish`` and the same for the other two commands. The scripts are click's own: at
completion time they call the command with ``_<NAME>_COMPLETE`` set.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from click.shell_completion import get_completion_class

COMMANDS = {"kes": "kesd.cli.kes", "kesctl": "kesd.cli.kesctl", "kesd": "kesd.cli.kesd"}
FILE_NAMES = {"bash": "{}", "zsh": "_{}", "fish": "{}.fish"}


def completion_script(prog: str, module: str, shell: str) -> str:
    """The completion script for ``prog`` (whose click command is ``module.main``) in ``shell``."""
    command = importlib.import_module(module).main
    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"click has no completion for {shell}")
    return cls(command, {}, prog, f"_{prog.upper()}_COMPLETE").source()


def write_all(outdir: Path) -> list[Path]:
    """Write every command's script for every shell under ``outdir``; return the files written."""
    written = []
    for shell, pattern in FILE_NAMES.items():
        (outdir / shell).mkdir(parents=True, exist_ok=True)
        for prog, module in COMMANDS.items():
            path = outdir / shell / pattern.format(prog)
            path.write_text(completion_script(prog, module, shell))
            written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: completions.py OUTDIR")
    write_all(Path(sys.argv[1]))
