"""Entry point of ``calico-ebpf``.

Each command lives in its own module with ``register(subparsers)``, which
adds its parser and sets ``func(args) -> int`` (the exit code). This module
only wires them together, so adding a command touches one line here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from calico_ebpf.errors import CalicoEBPFError

COMMAND_MODULES = (
    "calico_ebpf.cli.preflight",
    "calico_ebpf.cli.dump",
    "calico_ebpf.cli.conntrack",
    "calico_ebpf.cli.lab",
    "calico_ebpf.cli.install",
    "calico_ebpf.cli.trace",
    "calico_ebpf.cli.agent",
)

# Exit codes are part of the interface: scripts test them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calico-ebpf", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log libbpf and debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CalicoEBPFError as exc:
        print(f"calico-ebpf {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
