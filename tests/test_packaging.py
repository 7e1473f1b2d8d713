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


# -- what each part imports is declared where it is used ---------------------------


def declared_requirements(monkeypatch):
    """setup.py's install_requires and extras, read by running it with setup() captured."""
    import runpy

    import setuptools
    from packaging.requirements import Requirement

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    runpy.run_path(os.path.join(ROOT, "setup.py"))

    def names(requirements):
        return {Requirement(r).name.lower().replace("_", "-") for r in requirements}

    core = names(captured["install_requires"])
    extras = {extra: names(reqs) for extra, reqs in captured["extras_require"].items()}
    return core, extras


def third_party_imports(path):
    import ast

    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops = [node.module.split(".")[0]]
        else:
            continue
        for top in tops:
            if top not in sys.stdlib_module_names and top != "pcsignal":
                yield top, node.lineno


def extras_for(relative):
    """The extras a module may rely on, by where it lives."""
    if relative.startswith(os.path.join("docs", "")):
        return ("docs",)
    if relative == os.path.join("pcsignal", "bench", "calls.py"):
        return ("peer", "bench")
    if relative.startswith(os.path.join("pcsignal", "peer", "")):
        return ("peer",)
    if relative.startswith(os.path.join("pcsignal", "bench", "")):
        return ("bench",)
    return ()


def test_every_import_is_declared_for_the_part_that_uses_it(monkeypatch):
    from importlib.metadata import packages_distributions

    core, extras = declared_requirements(monkeypatch)
    distributions = packages_distributions()
    undeclared = []
    # The package, and the docs' configuration and Sphinx extension.
    folders = [os.path.join(ROOT, "pcsignal"), os.path.join(ROOT, "docs")]
    for directory, _, files in (entry for folder in folders for entry in os.walk(folder)):
        if os.path.join(ROOT, "docs", "_build") in directory:
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, ROOT)
            allowed = set(core).union(*(extras[e] for e in extras_for(relative)))
            for top, line in third_party_imports(path):
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not dists & allowed:
                    undeclared.append("%s:%d imports %s (from %s)" % (relative, line, top, sorted(dists)))
    assert not undeclared, "\n".join(undeclared)
    assert not core & {"aiortc", "av", "numpy", "aiohttp", "uvloop"}, core


# Everything the extras add: a server-only install has none of these.
EXTRA_MODULES = ("aiortc", "aioice", "av", "numpy", "pyee", "treq",
                 "aiohttp", "yarl", "uvloop", "psutil")


def run_without_extras(*twistd_args):
    """twistd in a Python that cannot import anything the extras add."""
    code = (
        "import sys\n"
        "for name in %r: sys.modules[name] = None\n"
        "from twisted.scripts.twistd import run\n"
        "sys.argv = ['twistd', '-n', '--pidfile=', '--logfile=-'] + sys.argv[1:]\n"
        "run()\n" % (EXTRA_MODULES,)
    )
    from conftest import LoggedProcess

    return LoggedProcess([sys.executable, "-c", code, *twistd_args])


def test_the_server_runs_without_the_extras():
    from conftest import LISTENING
    from httpclients import native

    server = run_without_extras("pcsignal", "--listen", "tcp:0:interface=127.0.0.1")
    try:
        port = server.wait_for_log(LISTENING).group("port")
        url = "http://127.0.0.1:%s" % (port,)
        assert native(url, "GET", "/sign_in?alone").status == 200
        assert native(url, "GET", "/").status == 200
    finally:
        server.stop()


def test_pcpeer_without_the_peer_extra_says_how_to_get_it():
    peer = run_without_extras("pcpeer", "--server", "http://127.0.0.1:9")
    assert peer.proc.wait(60) != 0
    peer.stop()
    lines = [l for l in peer.lines if l.strip()]
    assert len(lines) == 1, peer.output()
    assert "pip install 'pcsignal[peer]'" in lines[0] and "aiortc" in lines[0], lines
