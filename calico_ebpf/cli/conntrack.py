"""``calico-ebpf conntrack {dump,remove,flush,stats} [--pin-dir DIR | --calico] [--json]``

Inspect and edit the conntrack map, like ``calico-bpf conntrack``:

* ``dump [--filter EXPR]... [--raw]``: one line per flow (NAT_FWD stubs only
  with ``--raw``); ``EXPR`` is ``KEY=VALUE[,KEY=VALUE...]``, all must match,
  keys ``proto`` (tcp|udp|icmp|number), ``ip`` (any address of the flow,
  service included), ``src``, ``dst``, ``port`` (any port), ``sport``,
  ``dport``, ``type`` (normal|nat|nat_fwd|nat_rev), ``state`` (TCP state);
* ``remove PROTO IP1 IP2``: delete the entries between two addresses, NAT
  partners included;
* ``flush`` (alias ``clean``): delete every entry;
* ``stats``: size, entries, usage, entries by type/protocol, TCP states.

Exit codes: 0 done, 1 the map could not be opened or changed, 2 bad usage
(including a bad filter).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from calico_ebpf.dataplane.conntrack import ct_stats, remove_flows
from calico_ebpf.maps.ct_records import CtRecord
from calico_ebpf.maps.enums import CtType, Proto
from calico_ebpf.maps.named import NodeMaps

EXIT_USAGE = 2
FILTER_KEYS = ("proto", "ip", "src", "dst", "port", "sport", "dport", "type", "state")
_TYPES = {"normal": {CtType.NORMAL}, "nat": {CtType.NAT_FWD, CtType.NAT_REV},
          "nat_fwd": {CtType.NAT_FWD}, "nat_rev": {CtType.NAT_REV}}


def register(subparsers) -> None:
    p = subparsers.add_parser("conntrack", help="inspect and edit the conntrack map",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="ct_command", metavar="ACTION", required=True)

    def common(sp):
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--pin-dir", help="our pin directory (default /sys/fs/bpf/calico_ebpf/<hostname>)")
        where.add_argument("--calico", action="store_true",
                           help="a Calico node's map (/sys/fs/bpf/tc/globals/cali_v4_ct4)")
        sp.add_argument("--json", action="store_true", help="print JSON")
        return sp

    d = common(sub.add_parser("dump", help="print the flows"))
    d.add_argument("--filter", action="append", default=[], metavar="EXPR",
                   help="KEY=VALUE[,KEY=VALUE] with KEY in " + ", ".join(FILTER_KEYS))
    d.add_argument("--raw", action="store_true", help="include NAT_FWD entries")
    d.set_defaults(func=run_dump)
    r = common(sub.add_parser("remove", help="delete the flows between two addresses"))
    r.add_argument("proto", help="tcp, udp, icmp or a protocol number")
    r.add_argument("ip1")
    r.add_argument("ip2")
    r.set_defaults(func=run_remove)
    for name in ("flush", "clean"):
        common(sub.add_parser(name, help="delete every entry")).set_defaults(func=run_flush)
    common(sub.add_parser("stats", help="map usage and flow counts")).set_defaults(func=run_stats)


def _open(args):
    maps = NodeMaps(args.pin_dir, calico=args.calico)
    return maps, maps.conntrack


def _proto(text: str) -> Proto:
    try:
        return Proto(int(text)) if text.isdigit() else Proto[text.upper()]
    except (KeyError, ValueError):
        raise ValueError(f"unknown protocol {text!r}") from None


def parse_filter(exprs: list[str]):
    """A predicate over :class:`CtRecord` from ``--filter`` expressions (ValueError if malformed)."""
    terms = []
    for expr in exprs:
        for part in filter(None, (p.strip() for p in expr.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in FILTER_KEYS:
                raise ValueError(f"bad filter term {part!r}: want KEY=VALUE with KEY in {', '.join(FILTER_KEYS)}")
            terms.append(_term(key, value.strip()))
    return lambda rec: all(t(rec) for t in terms)


def _term(key: str, value: str):
    if key == "proto":
        proto = _proto(value)
        return lambda r: r.proto == proto
    if key in ("ip", "src", "dst"):
        try:
            ip = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"bad filter {key}={value!r}: not an IPv4 address") from None
        if key == "src":
            return lambda r: r.src == ip
        if key == "dst":
            return lambda r: r.dst == ip or (r.service is not None and r.service[0] == ip)
        return lambda r: ip in (r.src, r.dst) or (r.service is not None and r.service[0] == ip)
    if key in ("port", "sport", "dport"):
        if not value.isdigit() or int(value) > 65535:
            raise ValueError(f"bad filter {key}={value!r}: not a port")
        port = int(value)
        if key == "sport":
            return lambda r: r.sport == port
        if key == "dport":
            return lambda r: r.dport == port or (r.service is not None and r.service[1] == port)
        return lambda r: port in (r.sport, r.dport) or (r.service is not None and r.service[1] == port)
    if key == "type":
        if value.lower() not in _TYPES:
            raise ValueError(f"bad filter type={value!r}: want one of {', '.join(_TYPES)}")
        types = _TYPES[value.lower()]
        return lambda r: r.value.type in types
    state = value.upper()
    return lambda r: r.state == state


def run_dump(args: argparse.Namespace) -> int:
    try:
        keep = parse_filter(args.filter)
    except ValueError as exc:
        print(f"calico-ebpf conntrack dump: {exc}", file=sys.stderr)
        return EXIT_USAGE
    maps, ct = _open(args)
    try:
        recs = [r for r in ct.records(include_fwd=args.raw) if keep(r)]
    finally:
        maps.close()
    recs.sort(key=_order)
    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
    else:
        print("\n".join(str(r) for r in recs) if recs else "(no conntrack entries)")
    return 0


def _order(r: CtRecord):
    return (int(r.src), r.sport, int(r.dst), r.dport, int(r.value.type))


def run_remove(args: argparse.Namespace) -> int:
    try:
        proto = _proto(args.proto)
        ips = [ipaddress.IPv4Address(args.ip1), ipaddress.IPv4Address(args.ip2)]
    except ValueError as exc:
        print(f"calico-ebpf conntrack remove: {exc}", file=sys.stderr)
        return EXIT_USAGE
    maps, ct = _open(args)
    try:
        n = remove_flows(ct.map, proto, *ips)
    finally:
        maps.close()
    _report(args, {"removed": n}, f"{n} entries removed")
    return 0


def run_flush(args: argparse.Namespace) -> int:
    maps, ct = _open(args)
    try:
        n = ct.clear()
    finally:
        maps.close()
    _report(args, {"removed": n}, f"{n} entries removed")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    maps, ct = _open(args)
    try:
        st = ct_stats(ct.map)
    finally:
        maps.close()
    lines = [f"map {st['map']}: {st['entries']} of {st['max_entries']} entries ({100 * st['usage']:.1f}% used)",
             f"flows: {st['flows']} ({st['nat_flows']} NAT)",
             "by type: " + _kv(st["by_type"]),
             "by protocol: " + _kv(st["by_proto"]),
             "TCP: " + _kv(st["tcp_states"])]
    _report(args, st, "\n".join(lines))
    return 0


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _report(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)
