#!/usr/bin/env python3
"""A bot of BuildGrid's Bots API that does no work: BuildGrid's own floor per remote action.

It opens one bot session, as `mk worker` does (same platform, one lease at a time), and answers
every lease at once with one precomputed ActionResult: exit code 0, each path given on the
command line as an empty output file (with the `mk.blake3` property an mk worker sets), and
every timestamp of REAPI's ExecutedActionMetadata the same instant. It reads nothing from the
CAS and writes nothing to it (the empty blob needs no bytes). What a client's action costs with
this bot is what BuildGrid, PostgreSQL, the network and the client cost, without any worker.

    .venv/bin/python bench/floor_bot.py grpc://127.0.0.1:PORT c/a0.txt c/a1.txt ...

bench/remote_exec.py runs it for its chain of trivial actions (whose outputs it names).
"""

from __future__ import annotations

import argparse
import hashlib

import blake3

from mk.cache.reapi.endpoint import Endpoint
from mk.cache.reapi.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from mk.cache.reapi.protos.google.devtools.remoteworkers.v1test2 import (
    bots_pb2,
    bots_pb2_grpc,
    worker_pb2,
)
from mk.engine.remote_action import BLAKE3_PROPERTY, platform_properties

_POLL_SECONDS = 30.0


def empty_result(paths: list[str]) -> re_pb2.ActionResult:
    """Exit 0, each path an empty file, every timestamp the same instant (set per lease)."""
    result = re_pb2.ActionResult(exit_code=0)
    for path in sorted(paths):
        node = result.output_files.add(path=path, digest=re_pb2.Digest(hash=hashlib.sha256().hexdigest()))
        node.node_properties.properties.add(name=BLAKE3_PROPERTY, value=blake3.blake3().hexdigest())
    return result


def stamp(result: re_pb2.ActionResult, worker: str) -> re_pb2.ActionResult:
    stamped = re_pb2.ActionResult()
    stamped.CopyFrom(result)
    timing = stamped.execution_metadata
    timing.worker = worker
    timing.worker_start_timestamp.GetCurrentTime()
    for field in (timing.input_fetch_start_timestamp, timing.input_fetch_completed_timestamp,
                  timing.execution_start_timestamp, timing.execution_completed_timestamp,
                  timing.output_upload_start_timestamp, timing.output_upload_completed_timestamp,
                  timing.worker_completed_timestamp):
        field.CopyFrom(timing.worker_start_timestamp)
    return stamped


def serve(endpoint: Endpoint, paths: list[str]) -> None:
    """Answer leases until Ctrl-C (SIGINT), then close the session, so that BuildGrid gives no
    more leases to a bot that is gone."""
    from google.rpc import status_pb2

    bots = bots_pb2_grpc.BotsStub(endpoint.channel())
    bot_id = "floor-bot"
    device = worker_pb2.Device(handle=bot_id, properties=[
        worker_pb2.Device.Property(key=k, value=v) for k, v in platform_properties()])
    session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
        parent=endpoint.instance, bot_session=bots_pb2.BotSession(
            bot_id=bot_id, status=bots_pb2.OK, worker=worker_pb2.Worker(devices=[device]))), timeout=_POLL_SECONDS)
    result = empty_result(paths)
    print("floor bot: serving", flush=True)
    try:
        while True:
            for lease in session.leases:
                # BuildGrid hands a lease over already ACTIVE (assigned), other servers PENDING.
                if lease.state in (bots_pb2.LeaseState.PENDING, bots_pb2.LeaseState.ACTIVE):
                    lease.state = bots_pb2.LeaseState.COMPLETED
                    lease.result.Pack(stamp(result, bot_id))
                    lease.status.CopyFrom(status_pb2.Status(code=0))
            request = bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session)
            session = bots.UpdateBotSession.future(request, timeout=_POLL_SECONDS).result()
    except KeyboardInterrupt:
        session.status = bots_pb2.BotStatus.BOT_TERMINATING
        bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name=session.name, bot_session=session), timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("outputs", nargs="*", help="the output paths every result names")
    args = parser.parse_args()
    serve(Endpoint.parse(args.url), args.outputs)


if __name__ == "__main__":
    main()
