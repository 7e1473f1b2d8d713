"""What an operator and CI see: the installed plugins, and the README's commands."""

import os
import re
import subprocess
import sys

from conftest import ROOT, TWISTD


def test_twistd_lists_both_plugins_from_the_installed_package(tmp_path):
    # Outside the checkout and without PYTHONPATH: only what pip installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+pcsignal\s+\S", out.stdout, re.M), out.stdout
    assert re.search(r"^\s+pcpeer\s+\S", out.stdout, re.M), out.stdout


def test_plugin_modules_do_not_import_the_reactor():
    code = (
        "import sys\n"
        "from twisted.plugins import pcsignal_plugin, pcpeer_plugin\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'\n"
        "print(pcsignal_plugin.pcsignal.tapname, pcpeer_plugin.pcpeer.tapname)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pcsignal", "pcpeer"]


def test_no_twisted_plugins_init():
    # It would replace Twisted's own twisted/plugins/__init__.py when installed.
    assert not os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py"))
    assert not os.path.exists(os.path.join(ROOT, "twisted", "__init__.py"))


def readme_commands():
    text = open(os.path.join(ROOT, "README.rst"), encoding="utf-8").read()
    return [l.strip() for l in text.splitlines() if l.startswith("    apt-get update")]


def test_ci_runs_the_readme_test_command():
    run, test = readme_commands()[:2]
    assert "twistd -n pcsignal --port 8888" in run
    assert test.endswith("python -m pytest'")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert test in ci.splitlines()
