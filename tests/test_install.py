"""What a fresh install and CI get: the README's commands, .ci/run, and the peers."""

import os
import re

import pytest
from browser import require_chromium

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def _readme_test_command():
    block = _read("README.md").split("# run the tests", 1)[1]
    return next(ln for ln in block.splitlines() if "python -m pytest" in ln).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    steps = [ln for ln in _read(".ci/run").splitlines() if ln and not ln.startswith(("#", "set "))]
    assert steps == ['cd "$(dirname "$0")/.."', command]


def test_the_test_command_installs_chromium_unless_present():
    command = _readme_test_command()
    assert command.startswith(
        "{ command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }; }"
    )


def test_browser_tests_fail_instead_of_skip_on_ci(monkeypatch, tmp_path):
    missing = str(tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true runs the browser tests"):
        require_chromium(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no headless browser"):
        require_chromium(missing)


def _name(requirement):
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower()


def test_the_default_install_has_every_peer_of_the_default_bench_table():
    from tgraph.bench.contenders import DEFAULT_CONTENDERS, lookup

    project = tomllib.loads(_read("pyproject.toml"))["project"]
    installed = {_name(r) for r in project["dependencies"]}
    installed |= {_name(r) for r in project["optional-dependencies"]["test"]}
    for name in DEFAULT_CONTENDERS:
        needs = lookup(name).needs
        assert needs is None or needs.lower() in installed, f"{name} needs {needs}"
