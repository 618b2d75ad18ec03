"""What mk-out holds: exactly the files this build produced for the targets it built, while the
files of targets it did not build stay where they are."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from conftest import MK, Workspace, WorkspaceFactory, mk_env, parse_summary

from mk.engine.placed import RECORD


def placed(ws: Workspace) -> list[str]:
    """Every file under mk-out but mk's record of who placed what, relative to mk-out."""
    out = ws.root / "mk-out"
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != RECORD)


def test_a_file_a_target_no_longer_makes_is_removed(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'genrule(name = "g", outs = ["sub/old.txt"], cmd = "echo old > $@")\n'})
    ws.build("//p:g")
    assert placed(ws) == ["p/sub/old.txt"]
    ws.write("p/BUILD", 'genrule(name = "g", outs = ["new.txt"], cmd = "echo new > $@")\n')
    ws.build("//p:g")
    assert placed(ws) == ["p/new.txt"]
    assert not (ws.root / "mk-out/p/sub").exists()  # the folder it left empty goes too


def test_building_one_target_leaves_the_files_of_another_alone(workspace: WorkspaceFactory) -> None:
    ws = workspace({
        "a/BUILD": 'genrule(name = "a", srcs = ["in.txt"], outs = ["a.txt", "x/a2.txt"], '
                   'cmd = "for out in $(OUTS); do cp $< $$out; done")\n',
        "a/in.txt": "one\n",
        "b/BUILD": 'write_file(name = "b", out = "b.txt", content = "b\\n")\n'
                   'write_file(name = "c", out = "c.txt", content = "c\\n")\n',
    })
    ws.build("//a", "//b:b", "//b:c")
    ws.write("a/in.txt", "two\n")
    ws.build("//a")
    assert placed(ws) == ["a/a.txt", "a/x/a2.txt", "b/b.txt", "b/c.txt"]
    assert ws.read("mk-out/a/a.txt") == "two\n"
    ws.build("//b:b")
    assert placed(ws) == ["a/a.txt", "a/x/a2.txt", "b/b.txt", "b/c.txt"]


def test_a_file_two_targets_placed_stays_while_the_other_still_places_it(workspace: WorkspaceFactory) -> None:
    build = textwrap.dedent("""
        write_file(name = "gen", out = "gen.txt", content = "g\\n")
        write_file(name = "own", out = "own.txt", content = "o\\n")
        filegroup(name = "group", srcs = [{srcs}])
    """)
    ws = workspace({"p/BUILD": build.format(srcs='":gen", ":own"')})
    ws.build("//p:group")  # places gen.txt and own.txt for //p:group
    ws.build("//p:gen")  # gen.txt is now //p:gen's too
    ws.write("p/BUILD", build.format(srcs=""))
    ws.build("//p:group")
    # own.txt was only the group's; gen.txt is still //p:gen's, which this build did not build.
    assert placed(ws) == ["p/gen.txt"]


def test_a_no_op_build_writes_nothing_in_mk_out(workspace: WorkspaceFactory) -> None:
    ws = workspace({"p/BUILD": 'write_file(name = "a", out = "a.txt", content = "a")\n'})
    ws.build("//p:a")
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (ws.root / "mk-out").rglob("*")}
    ws.build("//p:a")
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (ws.root / "mk-out").rglob("*")} == before


def test_a_failed_target_keeps_its_files_and_a_built_one_loses_its_stale_ones(workspace: WorkspaceFactory) -> None:
    build = textwrap.dedent("""
        genrule(name = "bad", outs = ["bad.txt"], cmd = "{bad}")
        genrule(name = "good", outs = ["{good}"], cmd = "echo good > $@")
    """)
    ws = workspace({"p/BUILD": build.format(bad="echo bad > $@", good="good.txt")})
    ws.build("//p:bad", "//p:good")
    ws.write("p/BUILD", build.format(bad="exit 3", good="good2.txt"))
    result = ws.mk("build", "--keep-going", "-j1", "//p:bad", "//p:good")
    assert result.code == 1, result
    parse_summary(result.out)
    # //p:bad was not built this time: what it had is left as it was (the build failed, and
    # said so); //p:good was, and holds exactly what it made.
    assert placed(ws) == ["p/bad.txt", "p/good2.txt"]


def test_a_record_naming_paths_outside_mk_out_removes_nothing_there(workspace: WorkspaceFactory,
                                                                    tmp_path: Path) -> None:
    from mk.cache.seal import SEAL_BYTES
    from mk.engine.placed import write_record

    ws = workspace({"p/BUILD": 'write_file(name = "a", out = "a.txt", content = "a")\n'})
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    ws.build("//p:a")
    assert (ws.root / "mk-out" / RECORD).is_file()
    os.symlink(tmp_path, ws.root / "mk-out/p/link")
    # A record damaged or written by hand: it names files outside mk-out, and a stamp no build has.
    hostile = ("../../victim.txt", "p/link/victim.txt", str(victim), "p/a.txt")
    write_record(ws.root / "mk-out" / RECORD, bytes(SEAL_BYTES), {"//p:a": hostile})
    ws.build("//p:a")
    assert victim.read_text() == "keep me\n"
    assert (ws.root / "mk-out/p/a.txt").is_file()


def test_concurrent_builds_keep_a_whole_record(workspace: WorkspaceFactory) -> None:
    """Builds of different targets running at once each record what they placed, and none loses
    what another recorded: once every target renames its file, no old file is left."""
    targets = "\n".join(f'write_file(name = "t{i}", out = "{{prefix}}{i}.txt", content = "{i}")' for i in range(40))
    ws = workspace({"p/BUILD": targets.format(prefix="old") + "\n"})
    shares = [[f"//p:t{i}" for i in range(k, 40, 8)] for k in range(8)]
    for share in shares:  # analysed and built once, so the builds below go straight to placing
        ws.build(*share)
    (ws.root / "mk-out" / RECORD).unlink()  # ... where each must add its entries to the record
    procs = [subprocess.Popen([MK, "build", *share], cwd=ws.root, env=mk_env(ws.cache_dir),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for share in shares]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
    assert placed(ws) == sorted(f"p/old{i}.txt" for i in range(40))
    ws.write("p/BUILD", targets.format(prefix="new") + "\n")
    ws.build("//p:all")
    assert placed(ws) == sorted(f"p/new{i}.txt" for i in range(40))
