"""Man pages made from the tools' own argument parsers, so they cannot drift from them.

Every console script gets a page in section 1: its parser is taken from the real
entry point (the parser's ``parse_args`` is intercepted, so nothing runs), and
its usage, description, options and subcommands are written as roff. Adding a
tool's console script to setup.py is all it takes to have its page. The names in
:data:`ALIASES` are the same tool under another name: their page is a ``.so``
link to the main one, as Qubes links ``qvm-pci`` to ``qvm-device``.

``qubes-extensions(7)`` lists the extensions and the events each one handles,
read from the handler marks in the code (the built-in extensions of
:mod:`qubes_core.plugins`). The extension modules are parsed, not imported: the
isolated environment of a ``pip install .`` build lacks the model's
dependencies. A test checks the parsed marks against the imported classes.

Run at build time by setup.py (``python -m qubes_core.cli.manpages OUTDIR
ENTRY...``, ENTRY as in ``console_scripts``); an entry whose module cannot be
imported where the build runs is reported and left out.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Another name of a tool -> the tool whose page it shares.
ALIASES = {"qvm-pci": "qvm-device", "qvm-block": "qvm-device", "qvm-usb": "qvm-device",
           "qubesd-query-fast": "qubesd-query"}
ALIAS_NOTES = {
    "qvm-device": "the device class is then given by the name (qvm-pci list).",
    "qubesd-query": "a small C program with the same arguments and exit codes, which never "
                    "starts a qubesd.",
}
PROJECT = "qubes_core"
EXIT_STATUS = ("0 on success; 1 when the operation failed (the reason is one line on "
               "stderr, with the traceback under --verbose where the tool has it); 2 for "
               "bad arguments.")


class _Captured(Exception):
    """Carries the parser out of an entry point that was about to parse its arguments."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


def capture_parser(name: str, entry: Callable[..., Any]) -> argparse.ArgumentParser:
    """The parser ``entry`` (a console script's main) builds, without running it."""

    def intercept(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    parse_args, parse_known_args = (argparse.ArgumentParser.parse_args,
                                    argparse.ArgumentParser.parse_known_args)
    argv = sys.argv
    argparse.ArgumentParser.parse_args = intercept  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = intercept  # type: ignore[method-assign]
    sys.argv = [name]
    try:
        takes_argv = bool(inspect.signature(entry).parameters)
        entry([]) if takes_argv else entry()
    except _Captured as captured:
        captured.parser.prog = name
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
        argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
        sys.argv = argv
    raise ValueError(f"{name}: its entry point returned without parsing arguments")


def roff(text: str) -> str:
    """Text safe in a roff line: backslashes and leading dots escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line
                     for line in text.splitlines())


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                shown = action.metavar or action.dest.upper()
                metavar = " " + (" ".join(shown) if isinstance(shown, tuple) else shown)
            names = ", ".join(f"\\fB{roff(option)}\\fR" for option in action.option_strings)
            lines += [".TP", names + (f" \\fI{roff(metavar.strip())}\\fR" if metavar else "")]
        else:
            lines += [".TP", f"\\fI{roff(str(action.metavar or action.dest))}\\fR"]
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog} \
            if action.help and "%(" in action.help else (action.help or "")
        if action.choices and not isinstance(action.choices, dict):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        lines.append(roff(help_text) or "\\&")
    return lines


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, list[str], Any]]:
    """(name, aliases, parser) of each subcommand, in declaration order."""
    found: dict[int, tuple[str, list[str], Any]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if id(sub) in found:
                    found[id(sub)][1].append(name)
                else:
                    found[id(sub)] = (name, [], (sub, helps.get(name, "")))
    return list(found.values())


def man_page(name: str, parser: argparse.ArgumentParser, date: str,
             aliases: Iterable[str] = ()) -> str:
    """The roff page of one tool."""
    description = parser.description or ""
    lines = [f'.TH "{name.upper()}" "1" "{date}" "{PROJECT}" "User Commands"', ".SH NAME",
             f"{roff(name)} \\- {roff(description.splitlines()[0] if description else name)}",
             ".SH SYNOPSIS", ".nf", roff(parser.format_usage().removeprefix("usage: ").strip()),
             ".fi"]
    if aliases:
        lines += [".PP", "Also installed as " + ", ".join(f"\\fB{roff(a)}\\fR" for a in aliases)
                  + ": " + roff(ALIAS_NOTES.get(name, "the same tool."))]
    if description:
        lines += [".SH DESCRIPTION", roff(description)]
    lines += [".SH OPTIONS", *_option_lines(parser)]
    subcommands = _subcommands(parser)
    if subcommands:
        lines.append(".SH COMMANDS")
        for sub_name, sub_aliases, (sub, help_text) in subcommands:
            title = sub_name + (f" ({', '.join(sub_aliases)})" if sub_aliases else "")
            lines += [f".SS {roff(title)}", roff(help_text or sub.description or ""), ".nf",
                      roff(sub.format_usage().removeprefix("usage: ").strip()), ".fi"]
            lines += _option_lines(sub)
    lines += [".SH EXIT STATUS", roff(EXIT_STATUS), ".SH ENVIRONMENT", ".TP",
              "\\fBQUBES_BASE_DIR\\fR",
              "The installation to act on when \\fB\\-\\-base\\-dir\\fR is not given; without "
              "either, the production paths (/var/lib/qubes, /var/run/qubesd.sock).",
              ".SH SEE ALSO", "\\fBqubes\\-extensions\\fR(7)"]
    return "\n".join(lines) + "\n"


def extensions_page(date: str) -> str:
    """``qubes-extensions(7)``: each extension, its purpose and the events it handles."""
    from qubes_core.plugins import BUILTIN, EXTENSION_GROUP

    lines = [f'.TH "QUBES-EXTENSIONS" "7" "{date}" "{PROJECT}" "Miscellaneous"', ".SH NAME",
             "qubes\\-extensions \\- the extensions of qubesd and the events each handles",
             ".SH DESCRIPTION",
             "Behaviour that reacts to the model lives in extensions: each is a group of "
             "event handlers for one concern. Events of a qube are marked \\fBvm\\fR, events "
             "of the system \\fBapp\\fR. This page is generated from the handlers' marks in "
             "the code."]
    for ext_name, spec in sorted(BUILTIN[EXTENSION_GROUP].items()):
        summary, events = extension_in_source(spec)
        lines += [f".SH {roff(ext_name.upper())}", f"\\fB{roff(spec)}\\fR", ".PP",
                  roff(summary.split("\n\n")[0].replace("\n", " "))]
        for event, target, method, doc in events:
            lines += [".TP", f"\\fB{roff(event)}\\fR ({target})",
                      roff(f"{method}: {doc}" if doc else method)]
    return "\n".join(lines) + "\n"


# The marks of :mod:`qubes_core.ext` and the target each stands for.
HANDLER_MARKS = {"vm_handler": "vm", "app_handler": "app"}


def extension_in_source(spec: str) -> tuple[str, list[tuple[str, str, str, str]]]:
    """An extension's summary (its docstring, else its module's) and handled events, as
    :func:`handled_events` gives them, from its module's source (``module:Class``)."""
    module_name, _, class_name = spec.partition(":")
    path = Path(__file__).resolve().parents[2].joinpath(*module_name.split(".")).with_suffix(
        ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    cls = next((node for node in tree.body
                if isinstance(node, ast.ClassDef) and node.name == class_name), None)
    if cls is None:
        raise ValueError(f"{spec}: no class {class_name} in {path}")
    found: list[tuple[str, str, str, str]] = []
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = (ast.get_docstring(node) or "").split("\n")[0]
        for mark in node.decorator_list:
            if not isinstance(mark, ast.Call):
                continue
            name = getattr(mark.func, "id", getattr(mark.func, "attr", None))
            if name not in HANDLER_MARKS:
                continue
            for arg in mark.args:
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    raise ValueError(f"{spec}.{node.name}: event names must be literal strings")
                found.append((arg.value, HANDLER_MARKS[name], node.name, doc))
    return ast.get_docstring(cls) or ast.get_docstring(tree) or "", sorted(found)


def handled_events(cls: type) -> list[tuple[str, str, str, str]]:
    """(event, vm|app, method, first docstring line) of each handler of an imported
    extension class (what :func:`extension_in_source` must agree with)."""
    found: list[tuple[str, str, str, str]] = []
    for attr in sorted(dir(cls)):
        func = getattr(cls, attr, None)
        for target, events in getattr(func, "_ext_events", ()):
            doc = (inspect.getdoc(func) or "").split("\n")[0]
            found.extend((event, target, attr, doc) for event in events)
    return sorted(found)


def load_entry(spec: str) -> Callable[..., Any]:
    """``module:function`` -> the function."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module.strip()), attr.strip())


def write_pages(out: Path, entries: Iterable[str]) -> list[Path]:
    """Write a page for each ``name = module:function`` entry, the links and section 7."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds set it
    day = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).date()
           if epoch else datetime.date.today())
    date = day.isoformat()
    man1, man7 = out / "man1", out / "man7"
    man1.mkdir(parents=True, exist_ok=True)
    man7.mkdir(parents=True, exist_ok=True)
    written = []
    specs: dict[str, str] = {}
    for entry in entries:
        name, spec = (part.strip() for part in entry.split("=", 1))
        specs[name] = spec
    for name, spec in sorted(specs.items()):
        if name in ALIASES:
            continue
        try:
            parser = capture_parser(name, load_entry(spec))
        except Exception as err:  # reported, and the page left out
            print(f"man page of {name} left out: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        aliases = sorted(alias for alias, target in ALIASES.items() if target == name)
        path = man1 / f"{name}.1"
        path.write_text(man_page(name, parser, date, aliases), encoding="utf-8")
        written.append(path)
        for alias in aliases:
            link = man1 / f"{alias}.1"
            link.write_text(f".so man1/{name}.1\n", encoding="utf-8")
            written.append(link)
    try:
        page = extensions_page(date)
    except Exception as err:
        print(f"qubes-extensions(7) left out: {type(err).__name__}: {err}", file=sys.stderr)
    else:
        path = man7 / "qubes-extensions.7"
        path.write_text(page, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m qubes_core.cli.manpages OUTDIR 'name = module:function' ...``."""
    parser = argparse.ArgumentParser(prog="python -m qubes_core.cli.manpages",
                                     description="Write the man pages of the given tools.")
    parser.add_argument("out", type=Path, help="directory for man1/ and man7/")
    parser.add_argument("entries", nargs="*", metavar="ENTRY",
                        help="'name = module:function', as in console_scripts")
    args = parser.parse_args(argv)
    for path in write_pages(args.out, args.entries):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
