"""The build-time check of an image's commands: each names a program the booted image has.

Offline and in-process: trees are made here, their files stored in a private content store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mk.cache.cas import ContentStore
from mk.cache.tree import Entry, Kind, Tree
from mk.rules.image_check import busybox_applets, check_commands, program

# busybox keeps its applet names as one sorted, NUL-separated string; a real binary holds it
# among other strings, which are not sorted.
APPLETS = ["[", "[[", "ash", "awk", "cat", "chmod", "echo", "env", "hostname", "httpd", "insmod", "ip", "ls",
           "mkdir", "mount", "poweroff", "sh", "sleep", "sync", "syslogd", "udhcpc"]
BUSYBOX = (b"\x7fELF\x02\x01\x01" + bytes(9) + b"usage: %s\0zz\0aa\0"
           + b"\0".join(a.encode() for a in APPLETS) + b"\0\0GLIBC\0" + bytes(64))


@pytest.fixture
def cas(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path)


def file(cas: ContentStore, path: str, data: bytes, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.FILE, mode, digest=cas.put_bytes(data), size=len(data))


def link(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0o777, target=target)


def image_tree(cas: ContentStore, *extra: Entry) -> Tree:
    """Debian 12's merged /usr, busybox, nginx (through a link), a script and some mistakes."""
    return Tree.build([
        Entry("usr/bin", Kind.DIR, 0o755), Entry("usr/sbin", Kind.DIR, 0o755),
        link("bin", "usr/bin"), link("sbin", "usr/sbin"),
        file(cas, "usr/bin/busybox", BUSYBOX),
        file(cas, "usr/lib/nginx/nginx", b"\x7fELF nginx"),
        link("usr/sbin/nginx", "../lib/nginx/nginx"),
        link("usr/sbin/nginx-debug", "/usr/lib/nginx/nginx"),
        file(cas, "usr/share/doc/readme", b"not a program", mode=0o644),
        file(cas, "usr/local/bin/start", b"#!/bin/sh\nexec nginx\n"),
        file(cas, "usr/local/bin/start-bash", b"#!/bin/bash\nexec nginx\n"),
        Entry("usr/local/bin/start-hard", Kind.HARDLINK, 0o755, target="usr/local/bin/start"),
        link("usr/local/bin/dangling", "/opt/gone"),
        link("usr/local/bin/loop", "loop"),
        *extra,
    ])


def problems(cas: ContentStore, services: list[str] = [], onboot: list[str] = [],  # noqa: B006 (read only)
             tree: Tree | None = None) -> list[str]:
    return check_commands(tree or image_tree(cas), cas, services, onboot)


def test_applets_are_read_from_the_busybox_binary() -> None:
    assert busybox_applets(BUSYBOX) == frozenset(APPLETS)
    assert busybox_applets(b"\x7fELF busybox without a table") is None


def test_a_static_libc_s_sorted_upper_case_names_are_not_taken_for_applets() -> None:
    # A static glibc holds its sorted list of variables dropped for setuid programs; a busybox
    # with too few applets to tell its table apart is then not judged at all.
    unsecure = sorted(["GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LD_AUDIT", "LD_DEBUG", "LD_DEBUG_OUTPUT",
                       "LD_DYNAMIC_WEAK", "LD_HWCAP_MASK", "LD_LIBRARY_PATH", "LD_ORIGIN_PATH", "LD_PRELOAD",
                       "LD_PROFILE", "LD_SHOW_AUXV", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH", "NLSPATH",
                       "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"])
    few = b"ash\0cat\0init\0poweroff\0sh\0"
    binary = b"\x7fELF\0" + few + b"\0" + b"\0".join(n.encode() for n in unsecure) + b"\0\0"
    assert busybox_applets(binary) is None
    assert busybox_applets(binary + BUSYBOX) == frozenset(APPLETS)


@pytest.mark.parametrize(("command", "expected"), [
    ("/usr/sbin/nginx -g 'daemon off;'", "/usr/sbin/nginx"),
    ('"/usr/sbin/nginx" -c /etc/nginx.conf', "/usr/sbin/nginx"),
    ("nginx", "nginx"),
    ("FOO=1 BAR='a b' nginx -t", "nginx"),
    ("exec /usr/sbin/nginx", "/usr/sbin/nginx"),
    ("/usr/sbin/nginx;echo done", "/usr/sbin/nginx"),
    ("mkdir -p /run/x && chmod 0755 /run/x", "mkdir"),
    ("[ -d /run ] || mkdir /run", None),  # test: a builtin
    ("echo hello", None),
    ("cd /srv && ./serve", None),
    ("exec", None),
    ("FOO=1", None),
    ("( cd / && ls )", None),
    ("{ echo a; echo b; }", None),
    ("if true; then ngnix; fi", None),
    ("for i in 1 2; do echo $i; done", None),
    ("while true; do sleep 1; done", None),
    ("! false", None),
    ("$PROGRAM --flag", None),
    ("${NGINX:-nginx}", None),
    ("`which nginx`", None),
    ("~/bin/serve", None),
    ("/usr/sbin/ngin* -t", None),
    ("2>/dev/null nginx", None),
    ("> /tmp/log echo hi", None),
    ("ngnix 'unbalanced", None),  # the shell cannot parse it: nothing is decided
    ("", None),
    ("# only a comment", None),
])
def test_the_program_of_a_command(command: str, expected: str | None) -> None:
    assert program(command) == expected


@pytest.mark.parametrize("command", [
    "/usr/sbin/nginx -g 'daemon off;'",
    "nginx",
    "/sbin/nginx",  # /sbin -> usr/sbin
    "/usr/sbin/nginx-debug",  # an absolute link
    "/usr/local/bin/start",  # a script whose interpreter busybox provides
    "/usr/local/bin/start-hard",
    "usr/local/bin/start",  # relative to /, where init runs it
    "httpd -f -p 80",  # a busybox applet, linked at boot
    "/bin/sh -c 'echo hi'",
    "/usr/sbin/syslogd -n",
    "busybox httpd -f",
    "exec nginx",
    "FOO=1 nginx",
    "echo hello", "cd /", "[ -x /x ]", "true", ":", "( ngnix )", "$X", "if ngnix; then :; fi",
])
def test_a_command_the_image_can_run_passes(cas: ContentStore, command: str) -> None:
    assert problems(cas, services=[command], onboot=[command]) == []


def test_a_misspelt_service_is_named(cas: ContentStore) -> None:
    assert problems(cas, services=["/usr/sbin/ngnix -g 'daemon off;'"]) == [
        "service '/usr/sbin/ngnix -g 'daemon off;'': /usr/sbin/ngnix is not in the image "
        "(did you mean '/usr/sbin/nginx'?)"]


def test_a_bare_name_is_looked_up_on_path_and_among_the_applets(cas: ContentStore) -> None:
    assert problems(cas, onboot=["ngnix -t"]) == [
        "onboot command 'ngnix -t': ngnix is not in /usr/sbin, /usr/bin, /sbin or /bin, nor a busybox applet "
        "(did you mean 'nginx'?)"]
    assert problems(cas, onboot=["exec ngnix"]) == [
        "onboot command 'exec ngnix': ngnix is not in /usr/sbin, /usr/bin, /sbin or /bin, nor a busybox applet "
        "(did you mean 'nginx'?)"]


def test_a_service_may_start_with_a_dash(cas: ContentStore) -> None:
    """busybox init's `-` asks for a login shell; the program follows it."""
    assert problems(cas, services=["-/bin/sh"]) == []
    assert problems(cas, services=["-/bin/bash"]) == [
        "service '-/bin/bash': /bin/bash is not in the image"]


def test_what_cannot_be_executed_is_named(cas: ContentStore) -> None:
    assert problems(cas, services=["/usr/share/doc/readme", "/usr/sbin", "/usr/local/bin/dangling",
                                   "/usr/local/bin/loop", "/usr/local/bin/start-bash", "/opt/sh"]) == [
        "service '/usr/share/doc/readme': /usr/share/doc/readme is not executable (mode 0644)",
        "service '/usr/sbin': /usr/sbin is a directory",
        "service '/usr/local/bin/dangling': /usr/local/bin/dangling is not in the image "
        "(a symlink to /opt/gone, which is missing)",
        "service '/usr/local/bin/loop': /usr/local/bin/loop is a loop of symlinks",
        "service '/usr/local/bin/start-bash': /usr/local/bin/start-bash starts with #!/bin/bash; "
        "/bin/bash is not in the image",
        "service '/opt/sh': /opt/sh is not in the image",
    ]


def test_a_busybox_without_an_applet_table_is_given_the_benefit_of_the_doubt(cas: ContentStore) -> None:
    tree = image_tree(cas, file(cas, "usr/bin/busybox", b"\x7fELF busybox"))
    assert problems(cas, services=["httpd -f", "/bin/sh"], tree=tree) == []
    assert problems(cas, services=["/usr/sbin/ngnix"], tree=tree) == []  # it could be an applet
    assert problems(cas, services=["/opt/ngnix"], tree=tree) == ["service '/opt/ngnix': /opt/ngnix is not in the image"]


def test_a_file_a_package_installed_wins_over_an_applet(cas: ContentStore) -> None:
    """busybox --install -s keeps what is there: a non-executable file where an applet would go stays."""
    tree = image_tree(cas, file(cas, "usr/bin/awk", b"oops", mode=0o644))
    assert problems(cas, onboot=["/usr/bin/awk 1"], tree=tree) == [
        "onboot command '/usr/bin/awk 1': /usr/bin/awk is not executable (mode 0644)"]
