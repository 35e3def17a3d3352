"""`make demo` and `make serve` first run `make sandbox-deps`: bubblewrap is installed when missing
and apt-get can, and a loud warning says so when it cannot. Run against fake apt-get/bwrap on a
PATH of their own, so nothing is installed on this machine."""

import subprocess
from pathlib import Path

import pytest
from django.conf import settings

MAKEFILE = Path(settings.BASE_DIR) / "Makefile"
MAKE = "/usr/bin/make"
WARNING = "WEAKER fallback isolation"


def _tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _make(target: str, path: Path, cwd: Path, *, dry_run: bool = False) -> subprocess.CompletedProcess:
    args = [MAKE, "-f", str(MAKEFILE), "-C", str(cwd)] + (["-n"] if dry_run else []) + [target]
    return subprocess.run(args, env={"PATH": str(path)}, capture_output=True, text=True, timeout=60)


pytestmark = pytest.mark.skipif(not Path(MAKE).exists(), reason="needs GNU make at /usr/bin/make")


@pytest.fixture
def bin_dir(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder


def test_it_warns_loudly_when_bwrap_is_missing_and_cannot_be_installed(bin_dir, tmp_path):
    done = _make("sandbox-deps", bin_dir, tmp_path)
    assert done.returncode == 0  # the demo still runs, with the fallback
    assert WARNING in done.stderr and "apt-get install bubblewrap" in done.stderr


def test_it_warns_when_apt_get_fails(bin_dir, tmp_path):
    _tool(bin_dir, "apt-get", "exit 100\n")
    done = _make("sandbox-deps", bin_dir, tmp_path)
    assert done.returncode == 0
    assert WARNING in done.stderr


def test_it_installs_bwrap_with_apt_get_when_missing(bin_dir, tmp_path):
    log = tmp_path / "apt.log"
    # A fake apt-get that "installs" bubblewrap by putting a bwrap on the PATH.
    _tool(bin_dir, "apt-get", f'echo "$@" >> {log}\nprintf "#!/bin/sh\\n" > {bin_dir}/bwrap\n/bin/chmod 755 {bin_dir}/bwrap\n')
    done = _make("sandbox-deps", bin_dir, tmp_path)
    assert done.returncode == 0
    assert WARNING not in done.stderr
    assert "install -y -qq bubblewrap" in log.read_text()
    assert (bin_dir / "bwrap").exists()


def test_it_does_nothing_when_bwrap_is_there(bin_dir, tmp_path):
    _tool(bin_dir, "bwrap", "")
    _tool(bin_dir, "apt-get", f"touch {tmp_path}/apt-was-called\n")
    done = _make("sandbox-deps", bin_dir, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert not (tmp_path / "apt-was-called").exists()


@pytest.mark.parametrize("target", ["demo", "serve", "test"])
def test_it_sets_up_the_sandbox_before_demo_serve_and_test(bin_dir, tmp_path, target):
    planned = _make(target, Path("/usr/bin:/bin"), Path(settings.BASE_DIR), dry_run=True).stdout
    assert "command -v bwrap" in planned, planned
    assert planned.index("command -v bwrap") < planned.index("manage.py" if target != "test" else "pytest")
