"""man/kes.1 against the `kes` click tree: lint-clean, and every command, option, choice, shown default and
environment variable of the code is on the page, in the right place, so that the page cannot drift.

The rendered page is cut into sections, and COMMANDS into one block per command (a tag line at the
left margin of the section, up to the next one). A command's own options must be in its block; the
connection options shared by the server commands, and --color, in OPTIONS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from kesd.cli import kes

PAGE = Path(__file__).resolve().parents[2] / "man" / "kes.1"
TAG_INDENT = 7  # where mandoc puts section text and .TP tags


def _need_mandoc() -> None:
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed (apt-get install mandoc)")


def _commands() -> Iterator[tuple[str, click.Command]]:
    """Every command of the `kes` tree as (path without "kes", command), groups included."""
    ctx = click.Context(kes.main, info_name="kes")

    def walk(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            path = f"{prefix}{name}"
            yield path, command
            if isinstance(command, click.Group):
                yield from walk(command, f"{path} ")

    return walk(kes.main, "")


def _invokable(command: click.Command) -> bool:
    """True if the command does something itself (a group only with invoke_without_command)."""
    return not isinstance(command, click.Group) or command.invoke_without_command


def _signature(param: click.Parameter) -> tuple[str | None, tuple[str, ...], str | None]:
    return param.name, tuple(param.opts), getattr(param, "help", None)


def _common_signatures() -> set[tuple[str | None, tuple[str, ...], str | None]]:
    """The options documented once under OPTIONS: the connection options and the ignored --color."""

    signatures = set()
    for decorate in (kes.connection_options, kes.connection_options_long_server, kes.color_option):

        @click.command()
        @decorate
        def probe(**_: object) -> None:
            """Only carries the shared options."""

        signatures.update(_signature(p) for p in probe.params)
    return signatures


@pytest.fixture(scope="module")
def rendered() -> str:
    _need_mandoc()
    text = subprocess.run(
        ["mandoc", "-Tascii", "-O", "width=250", str(PAGE)], capture_output=True, text=True, check=True
    ).stdout
    return re.sub(r".\x08", "", text)  # drop the overstrike of bold and underline


@pytest.fixture(scope="module")
def sections(rendered: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    name = ""
    for line in rendered.splitlines()[1:-1]:  # without the header and footer lines
        if line and not line[0].isspace():
            name = line.strip()
            parts[name] = ""
        elif name:
            parts[name] += line + "\n"
    return parts


@pytest.fixture(scope="module")
def blocks(sections: dict[str, str]) -> dict[str, str]:
    """The COMMANDS section cut at its tag lines, keyed by the longest command path a tag starts with."""
    paths = [path for path, _ in _commands()]
    found: dict[str, str] = {}
    current: str | None = None
    for line in sections["COMMANDS"].splitlines():
        body = line[TAG_INDENT:]
        if line.startswith(" " * TAG_INDENT) and body and not body[0].isspace():
            words = body.split()
            matches = [p for p in paths if words[: len(p.split())] == p.split()]
            current = max(matches, key=lambda p: len(p.split())) if matches else None
            if current is not None:
                assert current not in found, f"two tags for {current!r}"
                found[current] = ""
        if current is not None:
            found[current] += line + "\n"
    return found


def _has(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` as a whole token (not inside a longer option or name)."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def _entry(text: str, opt: str) -> str:
    """The tagged entry of ``opt`` in ``text`` (its tag line and the lines indented deeper), else ``text``."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.lstrip().startswith("-") and _has(line.strip().split("  ")[0], opt):
            indent = len(line) - len(line.lstrip())
            end = start + 1
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * (indent + 1))):
                end += 1
            return "\n".join(lines[start:end])
    return text


def test_man_page_is_lint_clean() -> None:
    _need_mandoc()
    lint = subprocess.run(
        ["mandoc", "-Tlint", "-Wstyle", str(PAGE)], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0 and lint.stdout == "" and lint.stderr == "", lint.stdout + lint.stderr


def test_has_the_usual_sections(sections: dict[str, str]) -> None:
    for name in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "OPTIONS",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ):
        assert name in sections, name
    for ref in ("kesd(8)", "kesctl(8)", "kesd.yml(5)"):
        assert ref in sections["SEE ALSO"], ref


def test_walk_finds_the_whole_tree() -> None:
    """The walk itself must see the lazily imported `server` and the nested groups (or it proves nothing)."""
    paths = {path for path, _ in _commands()}
    assert {"server", "identity new", "key dek", "policy show", "ls", "status", "metric", "log"} <= paths
    assert len(paths) > 20


def test_every_command_has_its_own_entry(blocks: dict[str, str], sections: dict[str, str]) -> None:
    for path, command in _commands():
        if _invokable(command):
            assert path in blocks, f"no entry for 'kes {path}' in COMMANDS"
        else:
            assert _has(sections["COMMANDS"], path), path
    assert set(blocks) <= {path for path, _ in _commands()}


def test_every_option_is_documented_where_it_applies(
    blocks: dict[str, str], sections: dict[str, str]
) -> None:
    common = _common_signatures()
    missing: list[str] = []
    for path, command in _commands():
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            shared = _signature(param) in common
            where = sections["OPTIONS"] if shared else blocks.get(path, "")
            place = "OPTIONS" if shared else f"the entry of 'kes {path}'"
            entry = _entry(where, param.opts[-1])  # all its names in its own entry, if it has one
            for opt in (*param.opts, *param.secondary_opts):
                if not _has(entry, opt):
                    missing.append(f"{opt} of 'kes {path}' in {place}")
            if isinstance(param.type, click.Choice):
                missing += [
                    f"choice {choice!r} of {param.opts[-1]} in {place}"
                    for choice in param.type.choices
                    if not _has(entry, str(choice))
                ]
            if param.show_default and isinstance(param.default, str) and not _has(entry, param.default):
                missing.append(f"default {param.default!r} of {param.opts[-1]} in {place}")
    assert not missing, "\n".join(missing)


def test_global_options_are_documented(sections: dict[str, str]) -> None:
    ctx = click.Context(kes.main, info_name="kes")
    for param in kes.main.get_params(ctx):
        for opt in param.opts:
            assert _has(sections["OPTIONS"], opt), opt


def test_every_environment_variable_is_documented(sections: dict[str, str]) -> None:
    names = set()
    for _, command in _commands():
        for param in command.params:
            envvar = param.envvar
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    assert "KES_SERVER" in names and "MINIO_KES_SERVER" in names
    missing = [name for name in sorted(names) if not _has(sections["ENVIRONMENT"], name)]
    assert not missing, missing


def test_options_section_names_the_commands_without_connection_options(sections: dict[str, str]) -> None:
    """The first paragraph of OPTIONS lists exactly the commands that do not take the connection options."""
    intro = sections["OPTIONS"].strip().split("\n\n", 1)[0]
    for path, command in _commands():
        if not _invokable(command):
            continue
        remote = any(param.name == "api_key" for param in command.params)
        assert _has(intro, path) != remote, f"'kes {path}' {'is' if remote else 'is not'} a server command"


def test_exit_statuses_are_documented(sections: dict[str, str]) -> None:
    text = sections["EXIT STATUS"]
    for status in ("0", "1", "2"):
        assert re.search(rf"^ {{{TAG_INDENT}}}{status}\s", text, re.MULTILINE), status


def test_examples_follow_the_filesystem_keystore_walkthrough(sections: dict[str, str]) -> None:
    text = sections["EXAMPLES"]
    for command in (
        'kes identity new --ip "127.0.0.1" localhost',
        "kes identity of client.crt",
        "kes server --config config.yml --auth off",
        "kes key create my-key-1 -k",
        "kes key dek my-key-1 -k",
    ):
        assert command in text, command
