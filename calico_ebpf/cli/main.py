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
    "calico_ebpf.cli.demo",
)

# Exit codes are part of the interface: scripts test them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (the first non-option argument), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` naming one of ours, only that command's module is imported.

    Each module is named after its command. Importing every module costs about
    a second (the Kubernetes client, pyroute2, the dataplane), which a
    one-shot ``calico-ebpf dump`` should not pay; ``--help`` still lists all.
    """
    parser = argparse.ArgumentParser(
        prog="calico-ebpf", description="An eBPF Kubernetes dataplane in the style of Calico's eBPF mode.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log libbpf and debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m for m in COMMAND_MODULES if m.rsplit(".", 1)[1] == command] or COMMAND_MODULES
    for name in names:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CalicoEBPFError as exc:
        print(f"calico-ebpf {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
