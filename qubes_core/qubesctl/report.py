"""What one target's Salt run amounts to, and how qubesctl says it.

A run fails when Salt's exit code is non-zero, and also when Salt exited 0
but a state function's return is not a clean state result: a state with
``result: False``, a list of render errors, a string ("No matching sls
found"), or nothing at all (Qubes' qubesctl exits 0 in those cases: #4464,
#7772, #7035). The exit code of qubesctl is the worst of all targets'.
Lines follow Qubes: ``TARGET: OK`` / ``TARGET: ERROR (exit code N, details in
LOG)``; with ``--show-output`` a line ``TARGET:`` then Salt's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Functions whose return is a set of state results (the others are judged by exit code).
STATE_RESULT_FUNCTIONS = frozenset({
    "state.apply", "state.highstate", "state.sls", "state.sls_id", "state.single",
    "state.top", "state.template", "state.template_str", "state.low", "state.high",
    "state.pkg", "state.request", "state.run_request"})
FAILED_STATES = 2  # Salt's own exit code for a failed state
SKIPPED = "skipped"


@dataclass
class Outcome:
    """The result of one target's run."""

    target: str
    exit_code: int = 0
    changes: int = 0
    duration: float = 0.0
    log: Path | None = None
    output: str = ""
    problems: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def result(self) -> str:
        if self.skipped:
            return SKIPPED
        return "OK" if self.ok else f"ERROR ({self.exit_code})"


def judge(function: str, returns: dict[str, Any]) -> tuple[list[str], int]:
    """Problems in a state function's returns (one per minion id) and the count of changes."""
    if function not in STATE_RESULT_FUNCTIONS:
        return [], 0
    if not returns:
        return ["Salt returned nothing"], 0
    problems: list[str] = []
    changes = 0
    for minion, ret in returns.items():
        if isinstance(ret, str):
            problems.append(f"{minion}: {ret.strip().splitlines()[0] if ret.strip() else 'empty'}")
            continue
        if isinstance(ret, list):
            problems.extend(f"{minion}: {line}" for line in ret or ["empty result"])
            continue
        if not isinstance(ret, dict) or not ret:
            problems.append(f"{minion}: no state was applied")
            continue
        if "_error" in ret:  # salt-ssh could not run Salt in the target
            detail = str(ret.get("stderr") or ret.get("stdout") or "").strip().splitlines()
            problems.append(f"{minion}: {ret['_error']}"
                            + (f" ({detail[-1]})" if detail else ""))
            continue
        for state_id, state in ret.items():
            if not isinstance(state, dict) or "result" not in state:
                problems.append(f"{minion}: {state_id}: not a state result")
                continue
            if state.get("changes"):
                changes += 1
            if state["result"] is False:
                comment = str(state.get("comment", "")).strip().splitlines()
                problems.append(f"{minion}: {state.get('__id__', state_id)}: "
                                f"{comment[0] if comment else 'failed'}")
    return problems, changes


def parse_json_output(text: str) -> dict[str, Any] | None:
    """Salt's ``--out=json`` output (one document), or None when it is not one."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def settle(outcome: Outcome, function: str, salt_exit: int, stdout: str) -> Outcome:
    """Fill ``outcome`` from Salt's exit code and JSON output."""
    returns = parse_json_output(stdout)
    problems: list[str]
    if returns is None:
        outcome.problems.append("no JSON output from Salt")
        problems, changes = ([], 0)
        if function in STATE_RESULT_FUNCTIONS or salt_exit == 0:
            outcome.exit_code = salt_exit or 1
    else:
        problems, changes = judge(function, returns)
        outcome.exit_code = salt_exit or (FAILED_STATES if problems else 0)
    outcome.problems.extend(problems)
    outcome.changes = changes
    return outcome


def exit_status(outcomes: list[Outcome]) -> int:
    """The worst exit code (0 when every target is OK or skipped)."""
    return max((o.exit_code for o in outcomes), default=0)


def progress_line(outcome: Outcome) -> str:
    """``TARGET: OK``, ``TARGET: ERROR (exit code N, details in LOG)`` or the skip reason."""
    if outcome.skipped:
        return f"{outcome.target}: skipped ({outcome.skipped})"
    if outcome.ok:
        return f"{outcome.target}: OK"
    where = f", details in {outcome.log}" if outcome.log else ""
    return f"{outcome.target}: ERROR (exit code {outcome.exit_code}{where})"


def summary_table(outcomes: list[Outcome]) -> str:
    """One aligned row per target: result, states changed, seconds."""
    rows = [("TARGET", "RESULT", "CHANGES", "SECONDS")]
    for o in outcomes:
        rows.append((o.target, o.result, "-" if o.skipped else str(o.changes),
                     "-" if o.skipped else f"{o.duration:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)
