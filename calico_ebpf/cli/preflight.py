"""``calico-ebpf preflight [--json] [--no-probes]``: can this node run the eBPF dataplane?

Prints a table (or, with ``--json``, one JSON object: ``ok``, ``checks``,
``reasons``). Exit code 0 when every required check passes, 1 otherwise,
with the reasons on stderr for the table form.
"""

from __future__ import annotations

import argparse
import json
import sys

from calico_ebpf import preflight

EXIT_OK = 0
EXIT_UNFIT = 1


def register(subparsers) -> None:
    p = subparsers.add_parser("preflight", help="check that this node can run the eBPF dataplane",
                              description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-probes", action="store_true",
                   help="skip the probes that fork and create scratch namespaces (tc attach, bpffs mount)")
    p.set_defaults(func=run)


def format_table(checks: list[preflight.Check]) -> str:
    """Human table: one line per check, ``ok``/``FAIL``/``warn`` (a failed optional check)."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK'.ljust(width)}  RESULT  DETAIL"]
    for c in checks:
        result = "ok" if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"{c.name.ljust(width)}  {result.ljust(6)}  {c.detail}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    checks = preflight.run_checks(probes=not args.no_probes)
    reasons = preflight.failures(checks)
    if args.json:
        print(json.dumps({"ok": not reasons, "checks": [c.to_dict() for c in checks], "reasons": reasons}, indent=2))
    else:
        print(format_table(checks))
        if reasons:
            print("\nthis node cannot run the eBPF dataplane:", file=sys.stderr)
            for r in reasons:
                print(f"  - {r}", file=sys.stderr)
        else:
            print("\nthis node can run the eBPF dataplane")
    return EXIT_UNFIT if reasons else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run just this command (``python -m calico_ebpf.cli.preflight``)."""
    parser = argparse.ArgumentParser(prog="calico-ebpf preflight")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["preflight", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
