#!/usr/bin/env bash
# The main job: set up, build //examples:sshd, then (where QEMU is available) boot it, log in over
# ssh with a key made for this run, show `uname -r` and /etc/os-release, and stop it. The login is in
# sshd's isolated container, which may not power the machine off: `mk run` stops it on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mk="$PWD/.venv/bin/mk"

"$mk" build //examples
"$mk" image //examples:sshd

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v ssh >/dev/null; then
    echo "main-job: QEMU or ssh is missing, so //examples:sshd was built but not booted"
    exit 0
fi

work=$(mktemp -d)
vm_pid=""
cleanup() {
    if [[ -n $vm_pid ]] && kill -0 "$vm_pid" 2>/dev/null; then kill "$vm_pid"; wait "$vm_pid" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

ssh-keygen -q -N '' -t ed25519 -f "$work/key"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "main-job: booting //examples:sshd (serial console in $work/serial.log), ssh on 127.0.0.1:$port"
"$mk" run //examples:sshd --accel auto --publish "$port:22" --ssh-key "$work/key.pub" > "$work/serial.log" 2>&1 &
vm_pid=$!

ssh_vm() {
    ssh -i "$work/key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ConnectTimeout=5 -o LogLevel=ERROR root@127.0.0.1 "$@"
}
for _ in $(seq 90); do  # TCG boots in seconds; allow three minutes on a slow machine
    if ssh_vm true 2>/dev/null; then
        echo "main-job: logged in over ssh"
        ssh_vm 'uname -r; cat /etc/os-release'
        kill -TERM "$vm_pid"
        wait "$vm_pid" || true
        vm_pid=""
        echo "main-job: stopped the VM"
        exit 0
    fi
    if ! kill -0 "$vm_pid" 2>/dev/null; then break; fi
    sleep 2
done
echo "main-job: no ssh login; the VM's console said:" >&2
tail -40 "$work/serial.log" >&2
exit 1
