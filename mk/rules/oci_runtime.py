"""The OCI runtime configuration (config.json, runtime-spec 1.0.2) of a service's bundle.

Written with sorted keys and no whitespace, from the declaration alone, so the bundle is
byte-identical wherever it is built. Everything a service may do is granted here: the rest of
the system is out of its sight (namespaces, masked paths) or read-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mk.rules.init import PATH

# What containers are denied of /proc and /sys even read-only (as runc's and Docker's defaults).
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/sched_debug",
          "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware")
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class Process:
    """Who runs what, with which rights."""

    args: tuple[str, ...]
    uid: int
    gid: int
    capabilities: tuple[str, ...]
    env: tuple[str, ...]  # NAME=value, PATH excluded
    cwd: str


@dataclass(frozen=True)
class Isolation:
    hostname: str
    own_network: bool
    own_pid: bool
    tmpfs: tuple[str, ...]  # paths mounted as fresh tmpfs owned by the process's user
    binds: tuple[str, ...]  # paths bound read-write from the same path of the image (its persistent mounts)


def runtime_config(process: Process, isolation: Isolation) -> bytes:
    caps = list(process.capabilities)
    declared_path = any(e.startswith("PATH=") for e in process.env)
    env = list(process.env) if declared_path else [f"PATH={PATH}", *process.env]
    namespaces = [{"type": kind} for kind in ("mount", "ipc", "uts")]
    namespaces += [{"type": "pid"}] if isolation.own_pid else []
    namespaces += [{"type": "network"}] if isolation.own_network else []
    owner = f"uid={process.uid},gid={process.gid}"
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        *({"destination": path, "type": "tmpfs", "source": "tmpfs",
           "options": ["nosuid", "nodev", "mode=0755", owner]} for path in isolation.tmpfs),
        *({"destination": path, "type": "bind", "source": path, "options": ["rbind", "rw", "nosuid", "nodev"]}
          for path in isolation.binds),
    ]
    config = {
        "ociVersion": "1.0.2",
        "hostname": isolation.hostname,
        "root": {"path": "rootfs", "readonly": True},
        "process": {
            "terminal": False,
            "user": {"uid": process.uid, "gid": process.gid},
            "args": list(process.args),
            "env": env,
            "cwd": process.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps,
                             "ambient": caps},
            "noNewPrivileges": True,
        },
        "mounts": mounts,
        "linux": {"namespaces": namespaces, "maskedPaths": list(MASKED), "readonlyPaths": list(READ_ONLY)},
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode() + b"\n"
