"""Man pages: built at install from the parsers, one per console script, links for the aliases."""

from __future__ import annotations

import importlib.metadata
import inspect
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from qubes_core.cli import manpages
from qubes_core.plugins import BUILTIN, EXTENSION_GROUP
from tests.requirements import require_tool

MAN = Path(sys.prefix) / "share" / "man"


def console_scripts() -> dict[str, str]:
    dist = importlib.metadata.distribution("qubes_core")
    return {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}


def test_every_console_script_has_an_installed_page():
    scripts = console_scripts()
    assert {"qvm-ls", "qvm-device", "qubesd", "qubesd-query"} <= set(scripts)
    for name in scripts:
        page = MAN / "man1" / f"{name}.1"
        assert page.is_file(), f"no man page for {name} (reinstall: pip install -e .)"
    for tool in ("qvm-run", "qubesctl", "qubes-template-build"):
        if tool in scripts:  # made by other parts of the project, paged the same way
            assert (MAN / "man1" / f"{tool}.1").is_file()


@pytest.mark.parametrize("alias", ["qvm-pci", "qvm-block", "qvm-usb"])
def test_device_aliases_link_to_qvm_device(alias):
    assert (MAN / "man1" / f"{alias}.1").read_text() == ".so man1/qvm-device.1\n"
    assert alias in (MAN / "man1" / "qvm-device.1").read_text().replace("\\-", "-")


def test_fast_client_shares_the_qubesd_query_page():
    assert (MAN / "man1" / "qubesd-query-fast.1").read_text() == ".so man1/qubesd-query.1\n"


@pytest.mark.parametrize("name", ["qvm-ls", "qvm-pool", "qvm-shutdown", "qubesd"])
def test_page_has_every_option_of_the_parser(name):
    parser = manpages.capture_parser(name, manpages.load_entry(console_scripts()[name]))
    page = (MAN / "man1" / f"{name}.1").read_text().replace("\\-", "-")
    for action in parser._actions:
        for option in action.option_strings:
            if action.help != "==SUPPRESS==":
                assert f"\\fB{option}\\fR" in page, option
    assert page.startswith(f'.TH "{name.upper()}" "1"')


def test_pages_render_with_man():
    require_tool("man")
    for name in ("qvm-pool", "qvm-pci"):
        rendered = subprocess.run(["man", "-l", "-P", "cat", str(MAN / "man1" / f"{name}.1")],
                                  capture_output=True, text=True, check=True,
                                  cwd=MAN)  # .so links resolve from the man directory
        assert "qvm-" in rendered.stdout and "COMMANDS" in rendered.stdout
        assert "warning" not in rendered.stderr, rendered.stderr


def test_extensions_page_lists_each_extension_and_its_events():
    page = (MAN / "man7" / "qubes-extensions.7").read_text().replace("\\-", "-")
    for name, spec in BUILTIN[EXTENSION_GROUP].items():
        assert f".SH {name.upper()}" in page
        module, _, cls = spec.partition(":")
        extension = getattr(importlib.import_module(module), cls)
        for event, target, _, _ in manpages.handled_events(extension):
            assert f"\\fB{event}\\fR ({target})" in page
    assert "domain-feature-set:service.*" in page  # the services extension's trigger


def test_an_entry_that_cannot_load_is_left_out(tmp_path, capsys):
    written = manpages.write_pages(tmp_path, ["qvm-ls = qubes_core.cli.qvm_ls:main",
                                              "ghost = no_such_module:main"])
    assert tmp_path / "man1" / "qvm-ls.1" in written
    assert not (tmp_path / "man1" / "ghost.1").exists()
    assert "man page of ghost left out" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(BUILTIN[EXTENSION_GROUP]))
def test_extensions_read_from_source_agree_with_the_imported_classes(name):
    spec = BUILTIN[EXTENSION_GROUP][name]
    module, _, cls = spec.partition(":")
    extension = getattr(importlib.import_module(module), cls)
    summary, events = manpages.extension_in_source(spec)
    assert events == manpages.handled_events(extension)
    assert events, f"{spec} handles no event"
    own = extension.__dict__.get("__doc__")
    expected = own if own else sys.modules[module].__doc__
    assert summary == inspect.cleandoc(expected)


@pytest.mark.slow
def test_an_isolated_build_has_every_page(tmp_path):
    """``pip install .`` builds in an environment with setuptools only (none of the
    model's dependencies): the wheel it installs still holds every page, and the
    systemd units."""
    root = Path(__file__).resolve().parents[3]
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.decode().split("\0")
    source = tmp_path / "src"
    for name in filter(None, files):
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path / "wheel"), str(source)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("qubes_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    pages = {Path(name).name for name in names if "/share/man/" in name}
    assert {f"{script}.1" for script in console_scripts()} <= pages
    assert "qubes-extensions.7" in pages
    units = {Path(name).name for name in names if "/lib/systemd/system/" in name}
    assert units == {"qubesd.service", "qubes-sync-clock.service", "qubes-sync-clock.timer"}
