"""A user's first day, end to end: a new workspace with an nginx image, as README.md and BUILD.md
describe it. Lock, build, look inside, edit, compare, ask what an edit rebuilds, shrink the cache,
and build again. Needs the Debian mirror."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import MIRROR_SECONDS, MK, mk_env, parse_summary, run_within

pytestmark = pytest.mark.mirror

BUILD = """
deb_packages(
    name = "kernel_packages",
    packages = ["linux-image-cloud-amd64"],
    excludes = ["initramfs-tools", "linux-initramfs-tool", "kmod", "linux-base"],
)

kernel(name = "kernel", packages = ":kernel_packages", modules = ["virtio_pci", "virtio_net"])

deb_packages(
    name = "web_packages",
    packages = ["nginx-light", "busybox-static"],
    excludes = ["adduser", "debconf", "dpkg", "init-system-helpers", "lsb-base", "perl-base", "procps",
                "systemd", "sysvinit-utils", "ucf", "usr-is-merged", "usrmerge", "iproute2", "libc-bin"],
)

layer(
    name = "site",
    files = {"/var/www/html/index.html": "index.html"},
    users = ["root:0:0:root:/root:/bin/sh", "www-data:33:33:www-data:/var/www:/usr/sbin/nologin"],
    groups = ["root:0", "www-data:33"],
)

image(
    name = "web",
    kernel = ":kernel",
    base = [":web_packages", ":site"],
    onboot = ["mkdir -p /var/log/nginx /var/lib/nginx"],
    services = ["/usr/sbin/nginx -g 'daemon off;'"],
)
"""


def mk(root: Path, cache: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = run_within([MK, *args], MIRROR_SECONDS, f"mk {' '.join(args)}", cwd=cwd or root, env=mk_env(cache))
    assert result.returncode == 0, f"mk {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.timeout(6 * MIRROR_SECONDS)
def test_a_first_day_with_an_nginx_image(tmp_path: Path) -> None:
    root, cache = tmp_path / "ws", tmp_path / "cache"
    (root / "web").mkdir(parents=True)
    (root / "mk.toml").write_text('toolchain = "host"\n')
    (root / "web/BUILD").write_text(BUILD)
    (root / "web/index.html").write_text("<h1>first</h1>\n")

    for target in ("kernel_packages", "web_packages"):
        locked = mk(root, cache, "lock", f"//web:{target}")
        assert locked.stdout.startswith(f"web/{target}.lock.json: ") and "(written)" in locked.stdout

    built = mk(root, cache, "image", "//web:web", "--format", "tar")
    out = root / "mk-out/web/web"
    assert {"kernel", "initrd.img", "cmdline", "manifest.json", "rootfs.tar"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert "rootfs.tar" in manifest and "initrd.img" in manifest
    assert parse_summary(built.stdout).executed > 0

    # What is in the image, like `tar tvf`: nginx, and the page at its place with its size.
    listing = mk(root, cache, "ls", "//web:web", "/usr/sbin/nginx", "/var/www/html").stdout.splitlines()
    assert any(line.startswith("-rwxr-xr-x 0/0 ") and line.endswith(" /usr/sbin/nginx") for line in listing), listing
    assert any(" 15 " in line and line.endswith(" /var/www/html/index.html") for line in listing), listing

    # From the package's folder, a file answers "what rebuilds if I edit it".
    rdeps = mk(root, cache, "query", "rdeps", "index.html", cwd=root / "web").stdout.splitlines()
    assert rdeps == ["//web:site", "//web:web"]

    (root / "web/index.html").write_text("<h1>second, longer</h1>\n")
    again = mk(root, cache, "image", "//web:web")
    before_gc = (out / "manifest.json").read_text()
    ran = parse_summary(again.stdout)
    assert 0 < ran.executed < ran.actions  # only what the page reaches
    # A plain `mk image` after `--format tar` leaves no stale rootfs.tar looking current.
    assert not (out / "rootfs.tar").exists()

    changes = mk(root, cache, "diff", "//web:web").stdout
    assert "~ /var/www/html/index.html" in changes and "15 B -> 24 B" in changes, changes

    gc = mk(root, cache, "cache", "gc", "--max-size", "10M").stdout
    assert "left" in gc
    used = int(subprocess.run(["du", "-sb", str(cache)], capture_output=True, text=True, check=True).stdout.split()[0])
    assert used <= 12 * 2**20, f"the cache holds {used} bytes after gc --max-size 10M:\n{gc}"

    rebuilt = mk(root, cache, "image", "//web:web")
    assert parse_summary(rebuilt.stdout).executed > 0  # what gc evicted is made again, the same
    assert (out / "manifest.json").read_text() == before_gc
