"""`vspc-sim`: fake ESXi VMs against any vSPC, over the protocol alone (docs/vspc-sim.md).

Examples (docs/vspc-sim.md has a five-minute demo):

    vspc-sim --port 13370 -n 3 --shell --commands        # interactive VMs, a prompt
    vspc-sim --port 13370 -n 100 --stream 20 --clients 7000-7099 --type-rate 50 \\
             --vmotion success,abort --rounds 10 --json   # a soak with a verdict

Exit status: 0 when every step worked and no byte was lost or repeated, 1 when
something failed or a byte was lost or repeated, 2 for bad usage or no proxy.
Signals: SIGUSR1 starts a `success` vMotion of every VM; SIGINT/SIGTERM end the
run (with the report).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import stat
import sys
import time
from pathlib import Path
from typing import Any

from vspc.vspctui.sim.commands import read_commands
from vspc.vspctui.sim.fleet import Fleet, Ticker
from vspc.vspctui.sim.identity import Identity, IdentityError, generate, read_file
from vspc.vspctui.sim.report import Progress, render
from vspc.vspctui.sim.vm import Kind, Target

__all__ = ["main", "parse_ports"]


def parse_ports(text: str) -> list[int]:
    """`7000-7003,7010` -> [7000, 7001, 7002, 7003, 7010].

    Raises:
        ValueError: not a list of ports or ranges within 1..65535.
    """
    ports: list[int] = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        first, last = int(low), int(high) if dash else int(low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {part!r}")
        ports.extend(range(first, last + 1))
    return ports


def _kinds(text: str) -> list[Kind]:
    try:
        return [Kind(word.strip()) for word in text.split(",") if word.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: kinds are {', '.join(k.value for k in Kind)}"
        ) from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vspc-sim",
        description="Fake ESXi VMs for testing a virtual serial port concentrator.",
    )
    proxy = parser.add_argument_group("the proxy")
    proxy.add_argument("--host", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    proxy.add_argument("-p", "--port", type=int, required=True, help="proxy (ESXi) port")
    proxy.add_argument("--tls", action="store_true", help="connect with TLS")
    proxy.add_argument("--ca", type=Path, help="CA bundle to verify the proxy with (--tls)")
    proxy.add_argument(
        "--insecure", action="store_true", help="with --tls: do not verify the certificate"
    )
    proxy.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds per protocol step (default 10)"
    )
    vms = parser.add_argument_group("the VMs")
    vms.add_argument("-n", "--vms", type=int, default=1, help="how many VMs (default 1)")
    vms.add_argument(
        "--ports-per-vm", type=int, default=1, help="serial ports per generated VM (labelled)"
    )
    vms.add_argument("--vm-file", type=Path, help="VMs from a file: NAME [UUID|-] [LABEL] a line")
    vms.add_argument("--prefix", default="sim", help="generated names: PREFIX-00000, ...")
    vms.add_argument("--tag", type=int, default=0, help="makes generated UUIDs unique per run")
    vms.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    guest = parser.add_argument_group("what the VMs do")
    what = guest.add_mutually_exclusive_group()
    what.add_argument("--shell", action="store_true", help="a login prompt and an echoing shell")
    what.add_argument(
        "--stream", type=_positive, metavar="LINES/S", help="numbered lines per second per VM"
    )
    what.add_argument("--replay", type=Path, metavar="FILE", help="every VM writes FILE once")
    guest.add_argument(
        "--replay-rate", type=_positive, metavar="B/S", help="pace --replay (default: flat out)"
    )
    clients = parser.add_argument_group("typing clients")
    clients.add_argument(
        "--clients", metavar="PORTS", help="a telnet client on each port, e.g. 7000-7009,7020"
    )
    clients.add_argument("--client-host", help="address of the ports (default: --host)")
    clients.add_argument(
        "--type-rate", type=_positive, default=20.0, help="markers each client types a second"
    )
    motion = parser.add_argument_group("vMotions")
    motion.add_argument(
        "--vmotion", type=_kinds, metavar="KINDS", help="success,notnow,abort,abandon"
    )
    motion.add_argument("--rounds", type=int, default=1, help="rounds of --vmotion (default 1)")
    motion.add_argument("--loop", action="store_true", help="vMotion rounds until --duration")
    motion.add_argument(
        "--pause", type=float, default=0.0, help="seconds between rounds (default 0)"
    )
    motion.add_argument(
        "--abandon-wait", type=float, default=0.2, help="abandon: seconds until the VM restarts"
    )
    proxy.add_argument(
        "--reconnect-max", type=float, default=5.0, metavar="SECONDS",
        help="a dropped or refused VM connection is dialled again, backing off up to "
        "SECONDS (default 5; 0: never)",
    )  # fmt: skip
    run = parser.add_argument_group("the run")
    run.add_argument("--duration", type=float, help="seconds to run (default: until done)")
    run.add_argument("--commands", action="store_true", help="read commands from stdin (type help)")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls:
        return None
    context = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _stdin_reader() -> asyncio.StreamReader:
    """stdin as a StreamReader: a terminal, pipe or socket is read as it comes;
    anything epoll cannot watch (a regular file `< commands.txt`, /dev/null) is
    read at once."""
    reader = asyncio.StreamReader()
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty():
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    else:
        reader.feed_data(sys.stdin.buffer.read())
        reader.feed_eof()
    return reader


async def _run(args: argparse.Namespace, identities: list[Identity]) -> dict[str, Any]:
    began = time.perf_counter()
    fleet = Fleet(
        identities,
        Target(args.host, args.port, _tls(args), args.timeout),
        shell=args.shell,
        stream=args.stream is not None,
        abandon_wait=args.abandon_wait,
        reconnect_max=args.reconnect_max,
    )
    stop = asyncio.Event()
    background = _install_signals(fleet, stop)
    progress = Progress()
    # The prompt's replies and echo share the terminal: no self-overwriting line then.
    progress.enabled = progress.enabled and not args.commands
    seen = ConnectionNotes(fleet)

    def tick(_n: int) -> None:
        progress.show(fleet.stats, "running")
        seen.check()

    ticker = Ticker(0.5, tick)
    try:
        await fleet.connect(args.concurrency)
        if not fleet.connected:
            raise ConnectionError("no VM could connect: " + "; ".join(fleet.stats.failures[:3]))
        await _start_traffic(args, fleet)
        work, ending = await _plan(args, fleet, stop)
        await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
        for task in (*work, *ending):
            task.cancel()
        await asyncio.gather(*work, *ending, *background, return_exceptions=True)
        await fleet.settle()
    finally:
        ticker.stop()
        seen.check()  # what happened since the last tick
        progress.done()
        fleet.close()
    return fleet.report(
        seconds=round(time.perf_counter() - began, 3), proxy=f"{args.host}:{args.port}"
    )


class ConnectionNotes:
    """One stderr line when VM connections drop or come back, at most per tick: a
    restarted vspcd must not go unnoticed (the progress line is a terminal's only)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.lost = self.back = 0

    def check(self) -> None:
        counts = self.fleet.stats.counts
        lost, back = counts["disconnects"], counts["reconnects"]
        if lost > self.lost:
            down = sum(vm.reconnecting for vm in self.fleet.vms)
            print(f"vspc-sim: {lost - self.lost} VM connection(s) lost; {down} VM(s) "
                  "reconnecting with back-off", file=sys.stderr, flush=True)  # fmt: skip
        if back > self.back:
            up = len(self.fleet.connected)
            print(f"vspc-sim: {back - self.back} VM(s) reconnected; {up} of "
                  f"{len(self.fleet.vms)} connected", file=sys.stderr, flush=True)  # fmt: skip
        self.lost, self.back = lost, back


def _install_signals(fleet: Fleet, stop: asyncio.Event) -> set[asyncio.Task[Any]]:
    """SIGINT/SIGTERM end the run; SIGUSR1 moves every VM.  Returns the set that
    holds the SIGUSR1 vMotions while they run."""
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[Any]] = set()

    def on_usr1() -> None:
        task = asyncio.create_task(fleet.vmotion(Kind.SUCCESS))
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    return background


async def _start_traffic(args: argparse.Namespace, fleet: Fleet) -> None:
    if args.clients:
        await fleet.attach(args.client_host or args.host, parse_ports(args.clients))
        fleet.start_typing(args.type_rate)
    if args.stream is not None:
        fleet.start_streaming(args.stream)
    if args.replay is not None:
        fleet.start_replay(args.replay.read_bytes(), args.replay_rate)


async def _plan(
    args: argparse.Namespace, fleet: Fleet, stop: asyncio.Event
) -> tuple[list[asyncio.Task[Any]], list[asyncio.Task[Any]]]:
    """The run's tasks, and those whose first completion ends it: a signal, the
    --duration, or else all the finite work (the rounds unless --loop, the command
    prompt, a replay) done."""
    work: list[asyncio.Task[Any]] = []
    finite: list[asyncio.Task[Any]] = []
    if args.vmotion:
        rounds = None if args.loop else args.rounds
        work.append(asyncio.create_task(fleet.vmotion_rounds(args.vmotion, rounds, args.pause)))
        if not args.loop:
            finite.append(work[-1])
    if args.commands:
        reader = await _stdin_reader()
        work.append(asyncio.create_task(read_commands(fleet, sys.stderr, reader)))
        finite.append(work[-1])
    if args.replay is not None:
        work.append(asyncio.create_task(fleet.replayed()))
        finite.append(work[-1])
    ending: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if args.duration is not None:
        ending.append(asyncio.create_task(asyncio.sleep(args.duration)))
    elif finite:
        ending.append(asyncio.create_task(asyncio.wait(finite)))
    return work, ending


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.vm_file is not None:
            identities = read_file(args.vm_file, tag=args.tag)
        else:
            identities = generate(
                args.vms, prefix=args.prefix, tag=args.tag, ports=args.ports_per_vm
            )
        if args.clients:
            parse_ports(args.clients)
    except (IdentityError, OSError, ValueError) as exc:
        parser.error(str(exc))
    if not identities:
        parser.error("no VMs to simulate")
    try:
        report = asyncio.run(_run(args, identities))
    except (ConnectionError, OSError) as exc:
        print(f"vspc-sim: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(report, as_json=args.json))
    counts = report["counts"]
    clean = not counts.get("failures") and not counts.get("lost_bytes")
    return 0 if clean and not counts.get("repeated_bytes") else 1


if __name__ == "__main__":
    sys.exit(main())
