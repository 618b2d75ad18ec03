#!/usr/bin/env bash
# The shared-cache flow on this project's own examples, as two CI machines would see it:
#   1. `mk cache serve` on loopback (a fresh storage directory, a free port);
#   2. machine A: an empty local cache, builds //examples, uploads and signs every result;
#   3. machine B: another empty local cache, trusts A's public key, reads the remote only;
#      it must execute 0 actions, get every one from the remote, and place identical bytes.
# Needs the venv (scripts/setup.sh). Everything it makes lives in a temp dir, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
mk="$PWD/.venv/bin/mk"
work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A copy of the workspace (mk.toml and the examples), so the checkout's mk-out/ is left alone.
mkdir "$work/ws"
cp mk.toml "$work/ws/"
cp -r examples "$work/ws/"

"$mk" cache keygen "$work/ci" >/dev/null
"$mk" cache serve "$work/store" --port 0 >"$work/serve.log" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 100); do  # at most 10 s for the server to say where it listens
    url=$(sed -n 's|^mk cache serve: \(http://[^ ]*\)/ .*|\1|p' "$work/serve.log")
    [[ -n $url ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $url ]] || { echo "ci-shared-cache: mk cache serve did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "ci-shared-cache: remote cache at $url"

summary() { tail -n 1 "$1"; }
field() {  # field FILE NAME: a number from the summary line
    summary "$1" | sed -n "s/.* \([0-9]*\) $2.*/\1/p"
}

cd "$work/ws"
export MK_REMOTE_CACHE="$url" MK_TRUSTED_KEYS="$(cat "$work/ci.pub")" MK_REMOTE_TIMEOUT=10

echo "ci-shared-cache: machine A (empty cache, uploads and signs)"
MK_CACHE_DIR="$work/cache-a" MK_SIGNING_KEY="$work/ci.key" "$mk" build //examples >"$work/a.out" 2>"$work/a.err" \
    || { cat "$work/a.out" "$work/a.err" >&2; exit 1; }
grep '^mk: remote cache' "$work/a.err" || true
summary "$work/a.out"
(cd mk-out && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/a.sums"
rm -rf mk-out

echo "ci-shared-cache: machine B (another empty cache, reads the remote)"
MK_CACHE_DIR="$work/cache-b" "$mk" build //examples >"$work/b.out" 2>"$work/b.err" \
    || { cat "$work/b.out" "$work/b.err" >&2; exit 1; }
grep '^mk: remote cache' "$work/b.err" || true
summary "$work/b.out"
(cd mk-out && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/b.sums"

actions=$(summary "$work/b.out" | sed -n 's/.* \([0-9]*\) actions:.*/\1/p')
executed=$(field "$work/b.out" executed)
remote=$(field "$work/b.out" remote)
status=0
if [[ $executed != 0 ]]; then
    echo "ci-shared-cache: FAIL: machine B executed $executed actions (expected 0)" >&2; status=1
fi
if [[ -z $actions || $remote != "$actions" ]]; then
    echo "ci-shared-cache: FAIL: machine B had $remote remote hits for $actions actions" >&2; status=1
fi
if ! diff -u "$work/a.sums" "$work/b.sums" >&2; then
    echo "ci-shared-cache: FAIL: the two machines placed different bytes" >&2; status=1
fi
if grep -q 'warning' "$work/a.err" "$work/b.err"; then
    grep 'warning' "$work/a.err" "$work/b.err" >&2
    echo "ci-shared-cache: FAIL: unexpected warnings" >&2; status=1
fi
if [[ $status == 0 ]]; then
    echo "ci-shared-cache: OK: machine B executed 0 of $actions actions ($remote remote hits); $(wc -l <"$work/b.sums") outputs identical"
fi
exit $status
