"""`python -m b3lb.testing.fakebbb`: a fleet of fake BBB nodes on loopback until SIGINT/SIGTERM.

Prints one line per node (`name address port secret`), then the `b3lb node add` command for each
(`--protocol https` with `--tls DIR`: b3lb then needs `api.node_ca_file = DIR/ca.pem`).
Modes: b3lb.testing.fakebbb_modes; `POST /fleet/end-all` on any node address ends every meeting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal

from b3lb.testing.fakebbb import FakeFleet


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a fleet of fake BigBlueButton nodes on loopback.")
    parser.add_argument("--nodes", type=int, default=1, help="number of fake nodes")
    parser.add_argument("--port", type=int, default=0, help="shared port (default: any free port)")
    parser.add_argument("--secret", default=None, help="secret for all nodes (default: random per node)")
    parser.add_argument("--cluster", default="fake", help="cluster name used in the printed hints")
    parser.add_argument("--meetings", type=int, default=0, help="meetings to pre-populate per node")
    parser.add_argument("--attendees", type=int, default=0, help="attendees per pre-populated meeting")
    parser.add_argument("--recordings", action="store_true",
                        help="meetings created with record=true are recorded and uploaded to b3lb after they end")
    parser.add_argument("--upload-base", default=None, metavar="URL",
                        help="b3lb's own address for uploads and end callbacks, e.g. http://127.0.0.1:8000/ "
                             "(default: the address in the meeting's end-callback URL)")
    parser.add_argument("--tls", default=None, metavar="DIR",
                        help="serve https with certificates of a test CA; writes DIR/ca.pem (for api.node_ca_file)")
    parser.add_argument("--chunked", action="store_true",
                        help="answer with Transfer-Encoding: chunked instead of Content-Length")
    parser.add_argument("--gzip", action="store_true",
                        help="gzip-encode answers when the request sends Accept-Encoding: gzip")
    parser.add_argument("--churn", type=float, default=0.0, metavar="FRACTION",
                        help="before each getMeetings a node changes FRACTION of its meetings (attendees join or "
                             "leave) and replaces FRACTION/10 of its own (not API-created) meetings by new ones")
    args = parser.parse_args(argv)
    if not 0.0 <= args.churn <= 1.0:
        parser.error("--churn must be between 0 and 1")
    return args


async def _run_fleet(args: argparse.Namespace) -> None:
    fleet = FakeFleet(args.nodes, secret=args.secret, port=args.port, record_requests=False,
                      recordings=args.recordings, tls_dir=args.tls, chunked=args.chunked, gzip=args.gzip,
                      churn=args.churn)
    if args.upload_base:
        fleet.recorder.upload_base = args.upload_base
    await fleet.start()
    for node in fleet.nodes:
        node.populate(args.meetings, args.attendees)
        node.meetings_document()  # built now, not while the first poll waits
        print(f"{node.name} {node.domain} {node.port} {node.secret}", flush=True)
    # Hundreds of thousands of long-lived objects: full collections walking them cost more than the answers.
    gc.collect()
    gc.freeze()
    for node in fleet.nodes:
        print(
            f"b3lb node add --cluster {args.cluster} --slug {node.name} --domain {node.domain}"
            f" --port {node.port} --protocol {node.scheme} --secret {node.secret}",
            flush=True,
        )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop_requested.set)
    await stop_requested.wait()
    await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_arguments(argv)
    try:
        import uvloop  # optional speed-up
    except ImportError:
        asyncio.run(_run_fleet(args))
    else:
        uvloop.run(_run_fleet(args))
    return 0
