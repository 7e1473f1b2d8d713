"""
The README's and docs' example commands, as a reader pastes them: every
``twistd ... pcpeer`` command parses with twistd's own option parser, and
every literal block that starts several ``twistd`` gives each ``--pidfile=``
(twistd refuses a second instance writing the same ``twistd.pid``).
"""

import glob
import os
import shlex

import pytest
from twisted.scripts.twistd import ServerOptions

from conftest import ROOT

PAGES = [os.path.join(ROOT, "README.rst")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.rst")))


def literal_blocks(path):
    """The literal blocks (after a line ending in ``::``) of an RST file, as lists of lines."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].rstrip().endswith("::"):
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                block.append(lines[i])
                i += 1
            blocks.append(block)
        else:
            i += 1
    return blocks


def twistd_commands(block):
    """Each twistd command line of a block: continuation lines joined, && chains split."""
    text = "\n".join(block).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if "twistd " not in line:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # not a shell command (a log line quoting something)
        command = []
        for word in words + ["&&"]:
            if word == "&&":
                if command and os.path.basename(command[0]) == "twistd":
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def examples():
    found = []
    for path in PAGES:
        for block in literal_blocks(path):
            commands = twistd_commands(block)
            found.extend((os.path.relpath(path, ROOT), commands, command) for command in commands)
    return found


def test_the_pages_have_pcpeer_examples():
    pcpeer = [command for _, _, command in examples() if "pcpeer" in command]
    assert len(pcpeer) >= 4  # README, browser, pcpeer's quick start (two)


@pytest.mark.parametrize(
    "page, command",
    [(page, command) for page, _, command in examples() if "pcpeer" in command],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_pcpeer_examples_parse(page, command):
    options = ServerOptions()
    options.parseOptions(command[1:])  # a UsageError fails the test, naming the option
    assert options.subCommand == "pcpeer"
    assert options.subOptions["server"].startswith("http")


def test_pages_starting_several_twistd_give_them_their_own_pidfiles():
    """A reader follows a page in one folder: only one twistd there may write the default twistd.pid."""
    for path in PAGES:
        running = [command for _, _, command in examples_of(path) if "-n" in command or "--nodaemon" in command]
        default_pidfile = [" ".join(command) for command in running if "--pidfile=" not in command]
        assert len(default_pidfile) <= 1, (os.path.relpath(path, ROOT), default_pidfile)


def examples_of(path):
    page = os.path.relpath(path, ROOT)
    return [example for example in examples() if example[0] == page]
