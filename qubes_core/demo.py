"""``make demo``: ``qubesctl state.highstate`` with the shipped formulas, then a template
configured through a management DispVM.

A qubesd is started for ``./demo`` (``--base-dir`` or ``QUBES_BASE_DIR`` moves it;
the installation is created on first use). Where the sandbox runtime can run (root,
bubblewrap, debootstrap, loop devices) it is used, and the template ``debian-12`` is
a real Debian root built by ``qubes-template-build --with-salt`` (its root file
system cached outside the checkout); elsewhere libvirt's test driver runs and the
template is an empty one. Then, as a user would: ``qubesctl top.enable`` of the
shipped formulas and ``qubesctl state.highstate``, which creates the system's VMs
in dom0; on the sandbox also ``qubesctl --skip-dom0 --targets=debian-12 state.apply
qvm.template-config``, which configures the template from a ``disp-mgmt-debian-12``
DispVM, and an AppVM of the template is shown the change. The demo ends with what it
did and what it skipped (and why), and the VM table. Run it again: it finds
everything in place and changes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from qubes_core import paths
from qubes_core.client import connect
from qubes_core.client.app import Qubes

TEMPLATE = "debian-12"
SUITE = "bookworm"
FORMULAS = ("qvm.sys-net", "qvm.sys-firewall", "qvm.default-dispvm", "qvm.default-mgmt-dvm",
            "qvm.personal", "qvm.work", "qvm.vault")
CHECK_VM = "vault"  # an AppVM of the template without network: it shows the template's change
DEMO_USER = "demo-user"
PILLAR_TOP = "user:\n  '*':\n    - demo\n"
PILLAR = f"""\
# Written by make demo: what qvm.template-config does inside the template.
qvm:
  template-config:
    packages: [python3]
    user: {{name: {DEMO_USER}, shell: /bin/bash}}
    rw-config-file:
      path: /etc/qubes-demo
      contents: "configured by qubesctl through a management DispVM\\n"
"""
COLUMNS = ("name", "class", "state", "label", "template", "netvm")


def sandbox_missing() -> str | None:
    """Why the sandbox runtime cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("bwrap", "debootstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path("/dev/loop-control").exists():
        return "needs loop devices"
    if importlib.util.find_spec("qubes_core.backend.sandbox") is None:
        return "is not part of this build"
    return None


def qubesctl(base: Path, *argv: str) -> int:
    """Run qubesctl as a user would; its output goes to ours."""
    command = ["qubesctl", "--base-dir", str(base), *argv]
    print(f"\n$ {' '.join(command[:1] + command[3:])}", flush=True)
    return subprocess.run([sys.executable, "-m", "qubes_core.qubesctl.cli", *command[1:]],
                          check=False).returncode


def _text(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def table(app: Qubes) -> str:
    """The VM table: one aligned row per VM, read under one client cache."""
    rows = [tuple(column.upper() for column in COLUMNS)]
    with app.cache():
        for vm in app.domains:
            is_vm = vm.klass != "AdminVM"
            rows.append((
                vm.name, vm.klass, vm.get_power_state(), _text(vm.label),
                _text(vm.template) if vm.klass in ("AppVM", "DispVM")
                else "-",
                _text(vm.netvm) if is_vm else "-",
            ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip()
                     for row in rows)


def make_template(app: Qubes, base: Path, sandbox: bool) -> str:
    """The template the formulas build on (built only once); what was done."""
    if TEMPLATE in app.domains:
        return f"{TEMPLATE} was there already"
    if sandbox:
        from qubes_core import template_build
        from qubes_core.qubesctl.dispvm import prebuild_thin

        template_build.build(TEMPLATE, SUITE, base_dir=str(base), with_salt=True)
        prebuild_thin(paths.resolve(base), TEMPLATE)  # for the management DispVMs made of it
        done = (f"built {TEMPLATE} ({SUITE}, with Salt for the management DispVMs) with "
                "qubes-template-build")
    else:
        app.add_new_vm("TemplateVM", TEMPLATE, "black")
        done = f"created an empty {TEMPLATE} through the Admin API"
    app.default_template = TEMPLATE
    return done


def write_pillar(base: Path) -> None:
    """The demo's pillar, in the user pillar tree."""
    pillar = base / "srv" / "user_pillar"
    pillar.mkdir(parents=True, exist_ok=True)
    (pillar / "top.sls").write_text(PILLAR_TOP)
    (pillar / "demo.sls").write_text(PILLAR)


def check_in_appvm(base: Path) -> tuple[int, str]:
    """An AppVM of the template sees the change (qvm-run), and is shut down again."""
    result = subprocess.run(
        [sys.executable, "-m", "qubes_core.cli.qvm_run", "--base-dir", str(base), "--pass-io",
         CHECK_VM, f"id -un {DEMO_USER} && cat /etc/qubes-demo"],
        capture_output=True, text=True, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    """``make demo``: dom0 highstate of the shipped formulas, then one template."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", help="installation directory (default ./demo)")
    parser.add_argument("--runtime", choices=("sandbox", "test"), default=None,
                        help="runtime qubesd uses (default: sandbox where it can run, "
                        "else libvirt's test driver)")
    args = parser.parse_args(argv)
    base = Path(args.base_dir or os.environ.get(paths.ENV_VAR) or "demo").absolute()
    missing = sandbox_missing()
    runtime = args.runtime or ("test" if missing else "sandbox")
    if runtime == "sandbox" and missing:
        print(f"demo: the sandbox runtime {missing}", file=sys.stderr)
        return 1
    sandbox = runtime == "sandbox"
    did: list[str] = []
    skipped: list[str] = []
    codes: list[int] = []
    print(f"base directory: {base} (runtime: {runtime})")
    with connect(base, runtime=runtime, create=True) as app:
        did.append(make_template(app, base, sandbox))
        write_pillar(base)
        codes.append(qubesctl(base, "--dom0-only", "--out=quiet", "top.enable", *FORMULAS))
        codes.append(qubesctl(base, "state.highstate"))
        did.append("dom0: state.highstate of " + ", ".join(FORMULAS))
        if sandbox:
            code = qubesctl(base, "--skip-dom0", f"--targets={TEMPLATE}", "state.apply",
                            "qvm.template-config")
            codes.append(code)
            did.append(f"{TEMPLATE}: qvm.template-config applied from disp-mgmt-{TEMPLATE}")
            code, seen = check_in_appvm(base)
            codes.append(code)
            print(f"\n{CHECK_VM}, an AppVM of {TEMPLATE}, sees:\n  " +
                  seen.replace("\n", "\n  "))
            did.append(f"{CHECK_VM}: sees the template's new user and file")
            if not app.domains[CHECK_VM].is_halted():
                app.domains[CHECK_VM].shutdown(wait=True)
        else:
            why = ("--runtime test was given" if args.runtime == "test"
                   else f"the sandbox runtime {missing}")
            skipped.append(f"configuring {TEMPLATE} through a management DispVM: {why}")
        print("\n" + table(app))
        for vm in app.domains:  # sandbox VMs outlive qubesd: leave none running
            if vm.klass != "AdminVM" and not vm.is_halted():
                vm.shutdown(wait=True)
    print("\ndid:\n" + "".join(f"  - {line}\n" for line in did), end="")
    if skipped:
        print("skipped:\n" + "".join(f"  - {line}\n" for line in skipped), end="")
    failed = max(codes, default=0)
    print("result: " + ("OK" if not failed else f"a step failed (exit code {failed})"))
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
