"""Judging Salt's returns, the lines and the table, option parsing and target order."""

from __future__ import annotations

import json

import pytest

from qubes_core import exc
from qubes_core.qubesctl import options, report, targets
from qubes_core.qubesctl.cli import is_highstate
from qubes_core.qubesctl.dispvm import dispvm_name

GOOD = {"file_|-motd_|-/etc/motd_|-managed": {"result": True, "changes": {"diff": "new"},
                                             "comment": "written"},
        "pkg_|-vim_|-vim_|-installed": {"result": True, "changes": {}, "comment": "ok"}}


def settle(function: str, code: int, returns: object) -> report.Outcome:
    text = returns if isinstance(returns, str) else json.dumps(returns)
    return report.settle(report.Outcome("work"), function, code, text)


def test_clean_state_results_are_ok_and_count_changes():
    outcome = settle("state.apply", 0, {"work": GOOD})
    assert outcome.ok and outcome.changes == 1 and outcome.problems == []


@pytest.mark.parametrize("returns, problem", [
    ({"work": {**GOOD, "cmd_|-x_|-false_|-run": {"result": False, "changes": {},
                                                 "comment": "Command failed"}}},
     "Command failed"),
    ({"work": ["Rendering SLS 'base:broken' failed: mapping values are not allowed"]},
     "Rendering SLS"),
    ({"work": ["No matching sls found for 'nothere' in env 'base'"]}, "No matching sls"),
    ({"work": "No Top file or master_tops data matches found."}, "No Top file"),
    ({"work": {}}, "no state was applied"),
    ({}, "Salt returned nothing"),
    ({"work": {"stdout": "", "stderr": "Request refused: denied", "retcode": 126,
               "_error": "The command resulted in a non-zero exit code"}},
     "non-zero exit code (Request refused: denied)"),
])
def test_what_salt_calls_success_is_a_failure_when_a_state_did_not_apply(returns, problem):
    # Salt (and Qubes' qubesctl) may exit 0 here: #4464, #7772, #7035
    outcome = settle("state.highstate", 0, returns)
    assert outcome.exit_code == report.FAILED_STATES
    assert any(problem in line for line in outcome.problems)


def test_salts_own_exit_code_wins_and_no_json_is_a_failure_for_states():
    assert settle("state.apply", 1, {"work": GOOD}).exit_code == 1
    assert settle("state.apply", 0, "Traceback (most recent call last):").exit_code == 1
    assert settle("test.ping", 0, {"work": True}).ok  # not a state function
    assert settle("test.ping", 3, {"work": True}).exit_code == 3


def test_lines_table_and_exit_status(tmp_path):
    ok = report.Outcome("debian-12", changes=2, duration=3.25)
    bad = report.Outcome("work", exit_code=2, log=tmp_path / "mgmt-work.log", duration=1.0)
    idle = report.Outcome("vault", skipped="nothing in the top file")
    assert report.progress_line(ok) == "debian-12: OK"
    assert report.progress_line(bad) == \
        f"work: ERROR (exit code 2, details in {tmp_path}/mgmt-work.log)"
    assert report.progress_line(idle) == "vault: skipped (nothing in the top file)"
    table = report.summary_table([ok, bad, idle]).splitlines()
    assert table[0].split() == ["TARGET", "RESULT", "CHANGES", "SECONDS"]
    assert table[1].split() == ["debian-12", "OK", "2", "3.2"]
    assert table[2].split() == ["work", "ERROR", "(2)", "0", "1.0"]
    assert table[3].split() == ["vault", "skipped", "-", "-"]
    assert report.exit_status([ok, idle]) == 0 and report.exit_status([ok, bad, idle]) == 2


def test_options_split_ours_from_salts():
    args = options.parse(["--skip-dom0", "--targets=debian-12,work", "--show-output",
                          "--out=json", "state.apply", "motd", "test=True"])
    assert args.skip_dom0 and args.show_output and args.out == "json"
    assert args.target_names == ["debian-12", "work"]
    assert args.command == ["state.apply", "motd", "test=True"] and args.salt_args == []
    assert args.max_concurrency == options.DEFAULT_CONCURRENCY
    args = options.parse(["--dom0-only", "--id=work", "-l", "debug", "pillar.items"])
    assert args.command == ["pillar.items"] and args.salt_args == ["--id=work", "-l", "debug"]
    with pytest.raises(SystemExit):
        options.parse(["--skip-dom0"])  # no command
    with pytest.raises(SystemExit):
        options.parse(["--max-concurrency", "0", "state.highstate"])
    with pytest.raises(SystemExit):
        options.parse(["--dom0-only", "--all", "state.highstate"])


@pytest.mark.parametrize("argv, salt_args, command", [
    (["--id", "work", "pillar.items"], ["--id", "work"], ["pillar.items"]),
    (["--id", "work", "--skip-dom0", "state.apply", "x"], ["--id", "work"], ["state.apply", "x"]),
    (["-ldebug", "--log-file-level", "info", "state.apply"],
     ["-ldebug", "--log-file-level", "info"],
     ["state.apply"]),
    (["--retcode-passthrough", "test.ping"], ["--retcode-passthrough"], ["test.ping"]),
    (["--", "--id", "x"], [], ["--id", "x"]),
])
def test_a_salt_option_with_its_value_in_the_next_word_is_not_the_command(argv, salt_args,
                                                                          command):
    args = options.parse(argv)
    assert args.salt_args == salt_args and args.command == command


def test_highstate_is_recognised():
    assert is_highstate(["state.highstate"]) and is_highstate(["state.apply"])
    assert is_highstate(["state.apply", "test=True"])
    assert not is_highstate(["state.apply", "motd"]) and not is_highstate(["test.ping"])


DOMAINS = {"dom0": "AdminVM", "work": "AppVM", "debian-12": "TemplateVM", "fedora": "TemplateVM",
           "sa": "StandaloneVM", "disp1": "DispVM", "default-mgmt-dvm": "AppVM"}


def names(argv: list[str]) -> list[str]:
    return [t.name for t in targets.select(DOMAINS, options.parse([*argv, "state.highstate"]))]


def test_targets_templates_first_never_dom0_or_dispvms():
    assert names(["--all"]) == ["debian-12", "fedora", "default-mgmt-dvm", "sa", "work"]
    assert names(["--templates"]) == ["debian-12", "fedora"]
    assert names(["--standalones", "--app"]) == ["default-mgmt-dvm", "sa", "work"]
    assert names(["--targets=work,fedora"]) == ["fedora", "work"]
    assert [[t.name for t in b] for b in targets.batches(targets.select(
        DOMAINS, options.parse(["--targets=work,fedora", "state.highstate"])))] == \
        [["fedora"], ["work"]]
    for bad in ("nosuch", "dom0", "disp1"):
        with pytest.raises(exc.QubesValueError, match=bad):
            names([f"--targets={bad}"])


def test_dispvm_names_fit_31_characters_and_stay_distinct():
    assert dispvm_name("work") == "disp-mgmt-work"
    long_a, long_b = "a" * 25 + "-one", "a" * 25 + "-two"
    assert len(dispvm_name(long_a)) == 31 and dispvm_name(long_a) != dispvm_name(long_b)


def test_salt_ssh_in_the_dispvm_reads_its_thin_from_the_templates_cache(tmp_path):
    """Salt prefixes path options with root_dir: the cache must stay where the management
    template's pre-built thin is, or every run builds the thin again."""
    import salt.config
    import yaml

    from qubes_core.qubesctl.dispvm import BUNDLE, THIN_CACHE, master_config

    config = master_config({}, {"base": [f"{BUNDLE}/roots/base/0"]})
    (tmp_path / "master").write_text(yaml.safe_dump(config))
    opts = salt.config.master_config(str(tmp_path / "master"))
    assert opts["cachedir"] == THIN_CACHE
    assert opts["pki_dir"].startswith(BUNDLE + "/") and opts["sock_dir"].startswith(BUNDLE + "/")
