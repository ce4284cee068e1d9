"""The headless browser the HTML report tests use: Debian's chromium.

Off CI a missing browser skips those tests; with ``CI=true`` it fails them, so the page is
always tested where it counts (``.ci/run`` installs chromium, as the README's command does).
"""

import os
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"


def require_chromium(path: str = CHROMIUM) -> str:
    """The browser's path; skips the test without one, fails it on CI."""
    if os.path.exists(path):
        return path
    why = f"no headless browser at {path} (apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; CI=true runs the browser tests, install it", pytrace=False)
    pytest.skip(why)


def run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run headless chromium with a throwaway profile and no network chatter."""
    cmd = [
        require_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
