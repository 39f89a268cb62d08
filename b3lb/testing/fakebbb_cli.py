"""`python -m b3lb.testing.fakebbb`: a fleet of fake BBB nodes on loopback until SIGINT/SIGTERM.

Prints one line per node (`name address port secret`), then the `b3lb node add` command for each.
"""

from __future__ import annotations

import argparse
import asyncio
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
    return parser.parse_args(argv)


async def _run_fleet(args: argparse.Namespace) -> None:
    fleet = FakeFleet(args.nodes, secret=args.secret, port=args.port, record_requests=False,
                      recordings=args.recordings)
    if args.upload_base:
        fleet.recorder.upload_base = args.upload_base
    await fleet.start()
    for node in fleet.nodes:
        node.populate(args.meetings, args.attendees)
        print(f"{node.name} {node.domain} {node.port} {node.secret}", flush=True)
    for node in fleet.nodes:
        print(
            f"b3lb node add --cluster {args.cluster} --slug {node.name} --domain {node.domain}"
            f" --port {node.port} --protocol http --secret {node.secret}",
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
