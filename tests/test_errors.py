"""errors.cli_main: how a command ends when the reader of its output leaves early."""
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("fails_on", ["stdout", "socket"])
def test_a_reader_that_leaves_early_ends_a_command_quietly_and_other_broken_pipes_still_show(fails_on):
    """`command | head` used to end in a BrokenPipeError traceback; a broken pipe that is not stdout still shows."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from self_lengthen.errors import cli_main

@cli_main
def main():
    if {fails_on!r} == "socket":
        raise BrokenPipeError(32, "Broken pipe")
    for i in range(200000):
        print("line", i)

main()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `head -1` does
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    if fails_on == "stdout":
        assert first == b"line 0\n"
        assert (proc.returncode, stderr) == (141, "")
    else:
        assert proc.returncode == 1 and "BrokenPipeError" in stderr
