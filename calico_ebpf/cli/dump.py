"""``calico-ebpf dump {nat,conntrack,routes,ipsets,counters,ifstate,policy} [--pin-dir DIR | --calico] [--json] [IFACE]``

Prints the dataplane's maps the way ``calico-bpf`` does: human lines by
default, a JSON list with ``--json``. Maps open from our pin directory
(default ``/sys/fs/bpf/calico_ebpf/<hostname>``) or, with ``--calico``, from a
Calico node's pins in ``/sys/fs/bpf/tc/globals``. Exit code 0, or 1 when a
map cannot be opened.

``dump policy [IFACE]`` prints each endpoint interface's ingress and egress
policy slot and the rules of the program in it, with the instruction slots
each rule's code occupies (as ``bpftool prog dump xlated`` numbers them). The
rules come from the table the agent's ``PolicyManager`` keeps next to the pins
(``/run/calico_ebpf/pins/<pin_dir>/policy.json``,
:func:`calico_ebpf.dataplane.policy.policy_table_path`); without it only the
slots are shown.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections import defaultdict

from calico_ebpf.errors import BPFError, UnsupportedError
from calico_ebpf.maps.enums import Counter, CounterHook
from calico_ebpf.maps.named import NodeMaps
from calico_ebpf.maps.nat import ANY_SOURCE as ANY

WHAT = ("nat", "conntrack", "routes", "ipsets", "counters", "ifstate", "policy")


class _IntermixedParser(argparse.ArgumentParser):
    """Takes positionals after options (``dump policy --pin-dir D IFACE``): plain argparse
    consumes WHAT and the optional IFACE in one go and then refuses a later IFACE."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dump", help="print the dataplane's BPF maps", description=__doc__.splitlines()[0]
    )
    p.__class__ = _IntermixedParser
    p.add_argument("what", choices=WHAT, help="which maps")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pin-dir", help="our pin directory (default /sys/fs/bpf/calico_ebpf/<hostname>)")
    where.add_argument(
        "--calico", action="store_true", help="read a Calico node's maps (/sys/fs/bpf/tc/globals)"
    )
    p.add_argument("--calico-dir", default=None, help=argparse.SUPPRESS)  # tests: Calico-named pins elsewhere
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--raw", action="store_true", help="conntrack: include NAT_FWD entries")
    p.add_argument("iface", nargs="?", help="policy: only this interface (name or ifindex)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "iface", None) and args.what != "policy":
        print(f"calico-ebpf dump {args.what}: IFACE applies to 'dump policy' only", file=sys.stderr)
        return 2
    maps = NodeMaps(args.calico_dir or args.pin_dir, calico=args.calico or bool(args.calico_dir))
    try:
        rows, lines = DUMPERS[args.what](maps, args)
    finally:
        maps.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\n".join(lines) if lines else f"(no {args.what} entries)")
    return 0


def _optional_items(maps: NodeMaps, attr: str) -> list:
    """Items of a map that a node may legitimately lack (e.g. no affinity
    map, or our exact-match frontends on a Calico node): [] when absent."""
    try:
        return maps.get(attr).items()
    except UnsupportedError:
        return []
    except BPFError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return []


def _nat(maps: NodeMaps, args):
    backends = defaultdict(dict)
    for k, v in maps.nat_backends.items():
        backends[k.id][k.ordinal] = v
    # Exact-match frontends (ours) and the LPM ones (source ranges; all of them on Calico).
    frontends = [(k.addr, k.port, k.proto, ANY, v) for k, v in _optional_items(maps, "nat_frontends_hash")]
    frontends += [(k.addr, k.port, k.proto, k.src_cidr, v) for k, v in maps.nat_frontends.items()]
    frontends.sort(key=lambda f: (int(f[0]), f[1], f[2], f[3].prefixlen))
    rows, lines = [], []
    for addr, port, proto, src_cidr, v in frontends:
        count = -1 if v.is_drop else v.count
        bes = [] if v.is_drop else [(o, backends[v.id].get(o)) for o in range(v.count)]
        row = {
            "addr": str(addr),
            "port": port,
            "proto": str(proto),
            "src": str(src_cidr),
            "id": v.id,
            "count": count,
            "local": v.local,
            "affinity_timeo": v.affinity_timeo,
            "flags": str(v.flags),
            "backends": [None if b is None else str(b) for _, b in bes],
        }
        rows.append(row)
        flags = f" flags {str(v.flags).lower().replace('_', '-')}" if v.flags else ""
        src = f" src {src_cidr}" if src_cidr.prefixlen else ""
        head = f"{addr} port {port} proto {int(proto)} id {v.id} count {count} local {v.local}"
        lines.append(head + flags + src)
        for o, b in bes:
            lines.append(f"\t{v.id}:{o}\t {b if b is not None else '(missing)'}")
    for k, v in _optional_items(maps, "nat_affinity"):
        rows.append(
            {
                "affinity": True,
                "client": str(k.client_ip),
                "frontend": f"{k.addr}:{k.port}",
                "proto": str(k.proto),
                "backend": str(v.backend),
                "ts": v.ts,
            }
        )
        lines.append(
            f"client {k.client_ip} svc proto {int(k.proto)} {k.addr}:{k.port} -> {v.backend} ts {v.ts}"
        )
    return rows, lines


def _conntrack(maps: NodeMaps, args):
    recs = maps.conntrack.records(include_fwd=args.raw)
    recs.sort(key=lambda r: (int(r.src), r.sport, int(r.dst), r.dport))
    return [r.to_dict() for r in recs], [str(r) for r in recs]


def _routes(maps: NodeMaps, args):
    items = sorted(
        maps.routes.items(), key=lambda kv: (int(kv[0].cidr.network_address), kv[0].cidr.prefixlen)
    )
    rows = [
        {
            "cidr": str(k.cidr),
            "flags": str(v.flags),
            **({"ifindex": v.ifindex} if v.is_local_workload else {"next_hop": str(v.next_hop)}),
        }
        for k, v in items
    ]
    return rows, [f"{k.cidr}: {v}" for k, v in items]


def _ipsets(maps: NodeMaps, args):
    sets = defaultdict(list)
    for k in maps.ipsets.keys():
        sets[k.set_id].append(k)
    rows, lines = [], []
    for set_id in sorted(sets):
        members = sorted(sets[set_id], key=lambda k: (int(k.cidr.network_address), k.cidr.prefixlen, k.port))
        names = [str(k).split(" ", 1)[1] for k in members]
        rows.append({"set_id": f"0x{set_id:x}", "members": names})
        lines.append(f"IP set 0x{set_id:x}")
        lines.extend(f"   {n}" for n in names)
    return rows, lines


def _counters(maps: NodeMaps, args):
    by_if = defaultdict(dict)
    for k, total in maps.counters.totals().items():
        by_if[k.ifindex][k.hook] = total
    rows, lines = [], []
    hooks = list(CounterHook)
    for ifindex in sorted(by_if):
        per_hook = by_if[ifindex]
        n = max(len(v.counts) for v in per_hook.values())
        table = {
            Counter(i).name: {h.name: (per_hook[h].counts[i] if h in per_hook else 0) for h in hooks}
            for i in range(n)
        }
        rows.append({"ifindex": ifindex, "counters": table})
        lines.append(f"ifindex {ifindex}")
        lines.append(f"  {'COUNTER':<22}{'INGRESS':>12}{'EGRESS':>12}{'XDP':>12}")
        for name, vals in table.items():
            if any(vals.values()):
                lines.append(f"  {name:<22}" + "".join(f"{vals[h.name]:>12}" for h in hooks))
    return rows, lines


def _ifstate(maps: NodeMaps, args):
    rows, lines = [], []
    for k, v in sorted(maps.ifstate.items(), key=lambda kv: kv[0].ifindex):
        slots = {
            f: getattr(v, f)
            for f in (
                "xdp_policy_v4",
                "ingress_policy_v4",
                "egress_policy_v4",
                "xdp_policy_v6",
                "ingress_policy_v6",
                "egress_policy_v6",
                "tc_filter_ingress",
                "tc_filter_egress",
            )
        }
        rows.append({"ifindex": k.ifindex, "name": v.name, "flags": str(v.flags), **slots})
        jumps = ", ".join(f"{n}: {s}" for n, s in slots.items() if s != -1) or "no policy"
        lines.append(f"{k.ifindex:>6} : {{flags: {v.flags}, name: {v.name}, {jumps}}}")
    return rows, lines


def _policy(maps: NodeMaps, args):
    from calico_ebpf.dataplane.policy import DENY_SLOT, NO_POLICY, read_policy_table
    from calico_ebpf.maps.entries import IfaceFlags

    table = None if maps.calico else read_policy_table(maps.pin_dir)
    pods = {(e["ifindex"], e["ifname"]): pod for pod, e in (table.endpoints.items() if table else ())}
    rows, lines = [], []
    for k, v in sorted(maps.ifstate.items(), key=lambda kv: kv[0].ifindex):
        slots = {"ingress": v.ingress_policy_v4, "egress": v.egress_policy_v4}
        if IfaceFlags.WEP not in v.flags and all(s == NO_POLICY for s in slots.values()):
            continue  # a host interface without policy
        if args.iface and args.iface not in (v.name, str(k.ifindex)):
            continue
        pod = pods.get((k.ifindex, v.name))
        row = {"ifindex": k.ifindex, "name": v.name, "pod": pod}
        lines.append(f"{v.name} (ifindex {k.ifindex})" + (f" pod {pod}" if pod else ""))
        for direction, slot in slots.items():
            entry = table.slots.get(slot) if table else None
            rules = list(entry["rules"]) if entry else None
            row[direction] = {"slot": slot, "program": entry["program"] if entry else None,
                              "rules": [r.to_dict() for r in rules] if rules is not None else None}
            if slot == NO_POLICY:
                lines.append(f"  {direction}: no policy: allow (profile)")
                continue
            if slot == DENY_SLOT:
                lines.append(f"  {direction}: slot {slot}: deny (unknown workload)")
                continue
            if rules is None:
                lines.append(f"  {direction}: slot {slot} (no rule table for it)")
                continue
            lines.append(f"  {direction}: slot {slot} (program {entry['program'][:12]})")
            lines.append(f"    {'ID':>3}  {'INSNS':<11} {'ACTION':<7} RULE")
            for r in rules:
                code = f"[{r.start},{r.end})" if r.end > r.start else "-"
                what = r.describe() + (f" (matches nothing: {r.matches_nothing})" if r.matches_nothing else "")
                lines.append(f"    {r.id:>3}  {code:<11} {r.action:<7} {what}")
        rows.append(row)
    if args.iface and not rows:
        raise SystemExit(f"calico-ebpf dump policy: no endpoint interface {args.iface!r}")
    return rows, lines


DUMPERS = {
    "nat": _nat,
    "conntrack": _conntrack,
    "routes": _routes,
    "ipsets": _ipsets,
    "counters": _counters,
    "ifstate": _ifstate,
    "policy": _policy,
}
