"""service: a program an image runs as an isolated container, as LinuxKit runs its services.

What a service may see and do is declared, and nothing more is granted: its own root filesystem
(an OCI image mk builds, layers, or by default a read-only view of the image's root), its user
and group (never root unless asked), its capabilities (none by default), its namespaces (its own
mount, pid, ipc and uts namespaces always; its own network namespace unless `network = "host"`),
the paths it may write (each a fresh tmpfs, or the image's persistent storage), its environment
and restart policy. The image (`containers`) turns each into an OCI runtime bundle at build time
(mk/rules/bundles.py) that crun starts at boot (mk/rules/supervise.py).
"""

from __future__ import annotations

import re

from mk.engine import attrs
from mk.engine.errors import MkError, did_you_mean
from mk.engine.rule_api import Attr, DefaultInfo, Provider, Rule, RuleContext
from mk.rules.providers import OciImageInfo, ServiceInfo, TreeInfo
from mk.rules.trees import tree_inputs

# Linux 6.1's capabilities (include/uapi/linux/capability.h), by number.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
WRITABLE_KINDS = ("tmpfs", "persistent")
# A service's name is its container's id and its log's name: one path component, kept short.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._+@-]+")


def capability(text: str) -> str:
    name = text.upper() if text.upper().startswith("CAP_") else f"CAP_{text.upper()}"
    if name not in CAPABILITIES:
        raise ValueError(f"'{text}' is not a Linux capability{did_you_mean(name, CAPABILITIES)}")
    return name


def check_path(path: str, what: str) -> None:
    """A mount point: absolute, below /, normalised, and plain enough to go into the boot scripts as it is."""
    if not path.startswith("/") or path == "/" or any(part in ("", ".", "..") for part in path[1:].split("/")):
        raise ValueError(f"{what} '{path}' must be an absolute path below /, without '.', '..' or '//'")
    if not _PLAIN_PATH.fullmatch(path):
        raise ValueError(f"{what} '{path}' may hold only letters, digits and '/', '.', '_', '-', '+' or '@'")


def writable(path: str, kind: str) -> str:
    check_path(path, "writable path")
    if kind not in WRITABLE_KINDS:
        raise ValueError(f"writable path '{path}': '{kind}' is not one of {', '.join(WRITABLE_KINDS)}")
    return kind


def analyze(ctx: RuleContext) -> list[Provider]:
    name = ctx.label.name
    if not _NAME.fullmatch(name):
        raise MkError(f"service {ctx.label}: its name must be lower-case letters, digits, '_', '.' or '-' "
                      "(it names the container and its log)")
    images = ctx.providers("image", OciImageInfo)
    layers = tree_inputs(ctx, "rootfs")
    if images and layers:
        raise MkError(f"service {ctx.label}: name its root filesystem by `image` or by `rootfs`, not both")
    image = images[0] if images else None
    command = tuple(ctx.strings("command")) or ((*image.entrypoint, *image.cmd) if image else ())
    if not command:
        raise MkError(f"service {ctx.label}: `command` is empty" + (" and the image names no entrypoint or cmd"
                                                                     if image else ""))
    env_value = ctx.attrs["env"]
    assert isinstance(env_value, dict)
    for key in env_value:
        if not _ENV_NAME.fullmatch(key):
            raise MkError(f"service {ctx.label}: '{key}' is not an environment variable name")
    env = {**dict(e.split("=", 1) for e in (image.env if image else ())), **env_value}
    written = ctx.attrs["writable"]
    assert isinstance(written, dict)
    user = ctx.string("user") or (image.user if image and image.user else "nobody")
    info = ServiceInfo(
        name=name, onboot=bool(ctx.attrs["onboot"]), layers=image.layers if image else layers, command=command,
        user=user.partition(":")[0], group=ctx.string("group") or user.partition(":")[2],
        capabilities=tuple(sorted(set(ctx.strings("capabilities")), key=CAPABILITIES.index)),
        network=ctx.string("network"), pid=ctx.string("pid"),
        writable=tuple(sorted((path, str(kind)) for path, kind in written.items())),
        env=tuple(f"{k}={v}" for k, v in sorted(env.items())),
        workdir=ctx.string("workdir") or (image.workdir if image and image.workdir else "/"),
        restart=ctx.string("restart"), restarts=_restarts(ctx), after=tuple(ctx.strings("after")),
    )
    return [DefaultInfo(files=()), info]


def _restarts(ctx: RuleContext) -> int:
    value = ctx.attrs["restarts"]
    assert isinstance(value, int)
    if value < 0:
        raise MkError(f"service {ctx.label}: `restarts` must be 0 or more, not {value}")
    return value


RULE = Rule(
    name="service",
    doc=(
        "A program an `image` runs as an isolated container (name it in the image's `containers`): an OCI "
        "runtime bundle (`/containers/NAME/config.json` and its root) that mk writes at build time and the "
        "image's init starts with crun, which `base` must provide (Debian's `crun`). By default a service sees "
        "a read-only view of the image's root filesystem (without the image's /run, /tmp, /dev or persistent "
        "mounts), runs as `nobody` with no capabilities and `no_new_privileges`, in its own mount, pid, ipc, "
        "uts and network namespaces, with a fresh /proc, a minimal /dev and a read-only /sys. Grant more "
        "explicitly: `capabilities`, `network = \"host\"`, `pid = \"host\"`, `writable` paths, `user = "
        "\"root\"`. The build refuses a service whose program, user or group its root lacks, an unknown "
        "capability, and a `persistent` writable path the image does not declare in its `persistent`. At boot "
        "each line the service prints goes to the console as `[NAME] line` and to /run/mk/log/NAME.log; a "
        "service that exits is restarted by its `restart` policy at most `restarts` times, and the console "
        "says why it stopped. With `onboot = True` it is a boot step instead: run once to completion, in the "
        "order of `containers`, before the image's own `onboot` commands."
    ),
    attrs=(
        Attr("command", attrs.STRING_LIST, "The program and its arguments (no shell: wrap in `sh -c` for one). "
             "Default: the `image`'s entrypoint and cmd.", default=[]),
        Attr("image", attrs.LABEL, "An `oci_image` target to run: its layers are the service's root, and its "
             "cmd, entrypoint, env, user and workdir are the defaults of this rule's.", providers=(OciImageInfo,)),
        Attr("rootfs", attrs.LABEL_LIST, "Trees making up the service's root instead (layers, package sets), "
             "lowest first. Neither `image` nor `rootfs`: a read-only view of the image's root.", default=[],
             providers=(TreeInfo,)),
        Attr("user", attrs.STRING, "The user it runs as: a name from its root's /etc/passwd, or a number "
             "(`uid` or `uid:gid`). Default: the `image`'s user, else `nobody`.", default=""),
        Attr("group", attrs.STRING, "Its group (a name from its root's /etc/group, or a number); default: the "
             "user's own.", default=""),
        Attr("capabilities", attrs.records("capability names", capability), "The capabilities it holds "
             "(`CAP_NET_BIND_SERVICE` or `net_bind_service`), in its effective, permitted, bounding and ambient "
             "sets; none by default.", default=[]),
        Attr("network", attrs.one_of("own", "host"), "`own`: a network namespace of its own, with only a "
             "loopback device; `host`: the image's network (to serve on the image's ports).", default="own"),
        Attr("pid", attrs.one_of("own", "host"), "`own`: it sees only its own processes; `host`: all the "
             "image's.", default="own"),
        Attr("writable", attrs.keyed_records("writable kind", writable), "Absolute path -> `tmpfs` (a fresh "
             "empty tmpfs, owned by the service's user, gone when it stops) or `persistent` (the image's "
             "persistent mount at that path, given to the service's user). Everything else it sees is "
             "read-only.", default={}),
        Attr("env", attrs.STRING_DICT, "Environment variables, besides PATH (/usr/sbin:/usr/bin:/sbin:/bin) and "
             "the `image`'s.", default={}),
        Attr("workdir", attrs.STRING, "Its working directory; default: the `image`'s, else /.", default=""),
        Attr("restart", attrs.one_of("always", "on-failure", "never"), "When it is started again after it "
             "exits: `always`, `on-failure` (a non-zero status) or `never`. Boot steps never are.",
             default="on-failure"),
        Attr("restarts", attrs.INT, "At most this many restarts; then it stays down and the console says so.",
             default=5),
        Attr("after", attrs.STRING_LIST, "Names of services (of the same image) it starts after: it waits, up "
             "to 60 s, until each is running.", default=[]),
        Attr("onboot", attrs.BOOL, "A boot step run once to completion (in the order of the image's "
             "`containers`, before its own `onboot` commands), not a long-running service.", default=False),
    ),
    analyze=analyze,
)
