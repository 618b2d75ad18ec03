#!/usr/bin/env bash
# Remote execution on this project's own examples, against a real BuildGrid with two mk workers:
#   1. scripts/buildgrid.py: PostgreSQL and BuildGrid 0.4.4 on loopback (free ports, a temp dir);
#   2. two `mk worker` processes, each with an empty cache of its own;
#   3. //examples built here (an empty cache), then remotely (another empty cache): the same bytes;
#   4. remotely again from a third empty cache: nothing executes, the server's action cache answers.
# Everything is stopped and removed at the end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
mk="$repo/.venv/bin/mk"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$repo/.venv/bin/python" scripts/buildgrid.py >"$work/buildgrid.log" 2>&1 &
pids+=($!)
url=""
for _ in $(seq 600); do  # at most 60 s for PostgreSQL and BuildGrid to start
    url=$(sed -n 's|^buildgrid: \(grpc://[^ ]*\) .*|\1|p' "$work/buildgrid.log")
    [[ -n $url ]] && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/buildgrid.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $url ]] || { echo "ci-remote-exec: BuildGrid did not start" >&2; cat "$work/buildgrid.log" >&2; exit 1; }
echo "ci-remote-exec: BuildGrid at $url"
for i in 1 2; do
    MK_CACHE_DIR="$work/worker$i" "$mk" worker --remote "$url" --capacity 2 >"$work/worker$i.log" 2>&1 &
    pids+=($!)
done

mkdir "$work/ws"
cp mk.toml "$work/ws/"
cp -r examples "$work/ws/"
cd "$work/ws"
sums() { (cd mk-out && find . -type f ! -name '.mk-*' -print0 | sort -z | xargs -0 sha256sum); }
build() {  # build NAME [ENV...]: //examples with an empty cache named NAME
    local name=$1
    shift
    env MK_CACHE_DIR="$work/cache-$name" "$@" "$mk" build //examples -j 2 >"$work/$name.out" 2>"$work/$name.err" \
        || { cat "$work/$name.out" "$work/$name.err" "$work"/worker*.log >&2; exit 1; }
    tail -n 1 "$work/$name.out"
    grep '^mk: remote executor' "$work/$name.err" || true
}

echo "ci-remote-exec: //examples here"
build local
sums >"$work/local.sums"
rm -rf mk-out
echo "ci-remote-exec: //examples remotely"
build remote MK_REMOTE_EXECUTOR="$url"
sums >"$work/remote.sums"
rm -rf mk-out
echo "ci-remote-exec: //examples remotely again, from another empty cache"
build again MK_REMOTE_EXECUTOR="$url"

status=0
if ! diff -u "$work/local.sums" "$work/remote.sums" >&2; then
    echo "ci-remote-exec: FAIL: the remote build placed other bytes than the local one" >&2; status=1
fi
executed=$(sed -n 's/^mk: remote executor .*: \([0-9]*\) actions executed.*/\1/p' "$work/remote.err")
if [[ -z $executed || $executed == 0 ]]; then
    echo "ci-remote-exec: FAIL: no action ran remotely" >&2; status=1
fi
if ! grep -q '^mk: remote executor .*: 0 actions executed, [1-9][0-9]* from its action cache' "$work/again.err"; then
    echo "ci-remote-exec: FAIL: the second remote build executed something" >&2; status=1
fi
if [[ $status == 0 ]]; then
    echo "ci-remote-exec: OK: $executed actions ran on the workers; $(wc -l <"$work/local.sums") outputs identical"
fi
exit $status
