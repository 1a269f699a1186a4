"""A process saving qubes.xml in a loop is killed at random moments, many times.

After every kill the file must load and hold the last save that completed (the
writer prints a counter after each save returns; a kill between the rename and
the print may leave one more).
"""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import time

from qubes_core.app import Qubes

WRITER = """
import sys
from qubes_core.app import Qubes
app = Qubes(sys.argv[1])
vm = app.domains["work"]
counter = int(vm.features.get("counter", "0"))
while True:
    counter += 1
    vm.features["counter"] = str(counter)
    vm.memory = 400 + counter % 1000
    app.save()
    print(counter, flush=True)
"""

KILLS = 40


def _read_counter(path) -> int:
    with Qubes(path) as app:
        vm = app.domains["work"]
        counter = int(vm.features.get("counter", "0"))
        assert vm.memory == (400 + counter % 1000 if counter else vm.memory)
        return counter


def test_sigkill_during_saves_never_tears_the_file(basic_app):
    basic_app.save()
    path = basic_app.store.path
    basic_app.close()
    rng = random.Random(1234)
    last_seen = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        acknowledged = last_seen
        deadline = time.monotonic() + rng.uniform(0.05, 0.4)
        first_line = proc.stdout.readline()  # wait until it is saving
        if first_line:
            acknowledged = int(first_line)
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.01)
            if ready:
                line = proc.stdout.readline()
                if line:
                    acknowledged = int(line)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(timeout=30)
        for line in rest.split():
            acknowledged = int(line)
        counter = _read_counter(path)
        assert acknowledged <= counter <= acknowledged + 1
        assert counter >= last_seen
        last_seen = counter
    assert last_seen > KILLS  # the writer really made progress between kills
    assert not list(path.parent.glob(path.name + "~*"))
