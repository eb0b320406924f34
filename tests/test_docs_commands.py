"""The README and docs/ stay true: every `birdplane ...` command they show parses with the real
command line, and every relative link or image points to a file (and heading) that exists.

Commands in fenced code blocks tagged `bash` (continuation lines joined, comments dropped,
`&&`/`;`/`|` chains split, `VAR=value` prefixes and launchers such as `ray job submit ... --`
skipped) must parse in full; a line of another block (output, a tree) that starts like a command is
an error too, so that no command escapes the check untagged. Inline code spans that start with
`birdplane ` are often shorthand (`birdplane report`, `--extend N`), so for them the subcommand and
every `--flag` they name must exist. Every flag, in either place, must be written in full. Parsing
only: no command runs, and no Ray, Optuna or MLflow is imported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from study.cli import build_parser
from study.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`(birdplane [^`]+)`")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CHAIN = {"&&", "||", ";", "|", "&"}
SHELL = {"bash", "sh", "shell", "console", "zsh"}


def fenced_and_prose(text: str) -> tuple[list[tuple[str, str]], str]:
    """(language, body) of each fenced code block, and the text with those blocks removed."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)], FENCE.sub("", text)


def logical_lines(block: str) -> list[str]:
    """Shell lines of a code block, with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def birdplane_argvs(line: str) -> list[list[str]]:
    """The argument lists of every `birdplane` invocation in one shell line (comments dropped)."""
    if not re.search(r"(?:^|[\s;&|])birdplane\s", line):
        return []
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    argvs, segment = [], []
    for token in [*tokens, ";"]:
        if token in CHAIN:
            if "birdplane" in segment:
                argvs.append(segment[segment.index("birdplane") + 1 :])
            segment = []
        else:
            segment.append(token)
    return argvs


def documented_commands() -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """(where, argv) of every birdplane command in README.md and docs/*.md: code blocks, inline spans."""
    found, inline = [], []
    for doc in DOCS:
        blocks, prose = fenced_and_prose(doc.read_text(encoding="utf-8"))
        name = doc.relative_to(ROOT).as_posix()
        for language, block in blocks:
            if language not in SHELL:
                found += [
                    (f"{name}: {line.strip()}", ["<a command in a code block not tagged bash>"])
                    for line in block.splitlines()
                    if re.match(r"\s*(\$\s+)?birdplane\s+[a-z-]", line)
                ]
                continue
            for line in logical_lines(block):
                try:
                    argvs = birdplane_argvs(line)
                except ValueError as err:  # an unbalanced quote is a broken command too
                    found.append((f"{name}: {line.strip()}", [f"<shlex: {err}>"]))
                    continue
                found += [(f"{name}: {line.strip()}", argv) for argv in argvs]
        for span in INLINE.findall(prose.replace("\n", " ")):
            inline.append((f"{name}: `{span}`", span.replace("[", " ").replace("]", " ").split()[1:]))
    return found, inline


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    _, prose = fenced_and_prose(doc.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M)}


def relative_links(doc: Path) -> list[str]:
    _, prose = fenced_and_prose(doc.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # a link inside inline code is an example, not a link
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


PARSER = build_parser()
COMMANDS, INLINE_COMMANDS = documented_commands()


def subcommand_flags() -> dict[str, set[str]]:
    """Each subcommand's option strings, read from the real parser."""
    (sub,) = [a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}


def test_the_docs_show_birdplane_commands_of_every_kind():
    # The extractor must not silently find nothing: every command is shown in a code block somewhere.
    shown = {argv[0] for _, argv in COMMANDS if argv}
    assert set(subcommand_flags()) <= shown, shown
    assert len(COMMANDS) >= 20 and len(INLINE_COMMANDS) >= 20, (COMMANDS, INLINE_COMMANDS)


def test_every_documented_command_parses_with_the_real_command_line():
    broken = []
    for where, argv in COMMANDS:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                PARSER.parse_args(argv)
        except UsageError as err:
            broken.append(f"{where}\n    -> {err}")
        except SystemExit as exit_:  # `--help` exits 0; argparse's own exits are failures
            if exit_.code not in (0, None):
                broken.append(f"{where}\n    -> exit {exit_.code}: {out.getvalue().strip()}")
    assert not broken, "documented commands the CLI refuses:\n" + "\n".join(broken)


def test_every_flag_the_docs_name_is_spelled_in_full_as_the_command_line_has_it():
    # argparse accepts unambiguous prefixes (`--grace` for `--grace-epochs`): the docs must not rely on them.
    flags = subcommand_flags()
    broken = []
    for where, argv in COMMANDS + INLINE_COMMANDS:
        if not argv or argv[0] not in flags:
            broken.append(f"{where} -> no such command")  # (a code block's own failure is named above)
            continue
        unknown = [a.split("=")[0] for a in argv[1:] if a.startswith("-") and a.split("=")[0] not in flags[argv[0]]]
        if unknown:
            broken.append(f"{where} -> {argv[0]} has no {', '.join(unknown)}")
    assert not broken, "documented commands with flags the CLI lacks:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_points_to_something_that_exists(doc):
    missing = []
    for target in relative_links(doc):
        path, _, fragment = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            missing.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            missing.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not missing, f"{doc.relative_to(ROOT)}: broken links: {missing}"
