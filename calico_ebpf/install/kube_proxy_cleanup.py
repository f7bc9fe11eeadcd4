"""Node side of the takeover: remove what kube-proxy left in iptables and nftables.

When the eBPF dataplane replaces kube-proxy, kube-proxy's rules must go, or
they keep rewriting Service traffic behind our back. Like Felix (FelixConfiguration
``bpfKubeProxyIptablesCleanupEnabled``, default true) we remove, in the node's
network namespace:

- every ``KUBE-*`` chain of kube-proxy in the nat, filter and mangle tables (and raw,
  if present), for IPv4 and IPv6, and every rule in another chain that jumps or
  goes to one of them (``-A PREROUTING ... -j KUBE-SERVICES``);
- the nftables tables named ``kube-proxy`` (kube-proxy's nftables mode).

Nothing else is touched: the deletions go through ``iptables-restore --noflush``
(``-D`` of the exact rules, then ``-F``/``-X`` of the chains) in one transaction
per table, so other rules keep their place and counters. kubelet's own chains
(``KUBE-FIREWALL``, ``KUBE-KUBELET-CANARY``, ``KUBE-IPTABLES-HINT``, ``KUBE-MARK-DROP``)
are left alone: they are not kube-proxy's and kubelet relies on them.

On AKS kube-proxy keeps running next to the dataplane, so the cleanup is off there
(``enabled=False``). Example::

    report = cleanup_kube_proxy(netns=None)          # the host's namespace
    report = cleanup_kube_proxy(netns=scratch_ns)    # a calico_ebpf.kernel.netns.Netns
    print(report.removed_chains, report.removed_nft_tables)
"""

from __future__ import annotations

import itertools
import shlex
import subprocess
from collections.abc import Iterable

import attrs

from calico_ebpf.errors import CalicoEBPFError

__all__ = ["KUBELET_CHAINS", "CleanupError", "CleanupReport", "cleanup_enabled", "cleanup_kube_proxy",
           "plan_iptables_cleanup"]

KUBE_PREFIX = "KUBE-"
KUBELET_CHAINS = frozenset({"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-MARK-DROP"})
NFT_TABLE = "kube-proxy"
IPTABLES_FAMILIES = ("iptables", "ip6tables")
_JUMP_FLAGS = ("-j", "--jump", "-g", "--goto")


class CleanupError(CalicoEBPFError):
    """A tool failed while removing kube-proxy's rules; names the command and its stderr."""


@attrs.define
class CleanupReport:
    """What was removed (or, in a dry run, would be).

    ``removed_chains`` and ``deleted_rules`` are keyed by ``"<family> <table>"``
    (``"iptables nat"``); ``scripts`` holds the iptables-restore input per key.
    """

    removed_chains: dict[str, list[str]] = attrs.Factory(dict)
    deleted_rules: dict[str, list[str]] = attrs.Factory(dict)
    removed_nft_tables: list[str] = attrs.Factory(list)
    scripts: dict[str, str] = attrs.Factory(dict)
    skipped: list[str] = attrs.Factory(list)

    @property
    def changed(self) -> bool:
        return bool(self.removed_chains or self.deleted_rules or self.removed_nft_tables)


def cleanup_enabled(felix_spec: dict | None) -> bool:
    """``bpfKubeProxyIptablesCleanupEnabled`` of a FelixConfiguration spec (default true)."""
    value = (felix_spec or {}).get("bpfKubeProxyIptablesCleanupEnabled")
    return True if value is None else bool(value)


def _jump_target(rule: str) -> str | None:
    words = shlex.split(rule)
    for flag, value in itertools.pairwise(words):
        if flag in _JUMP_FLAGS:
            return value
    return None


def _is_kube_proxy_chain(name: str, keep: frozenset[str]) -> bool:
    return name.startswith(KUBE_PREFIX) and name not in keep


def plan_iptables_cleanup(save_output: str, keep: Iterable[str] = KUBELET_CHAINS) -> dict[str, tuple[list[str], list[str], str]]:
    """From ``iptables-save`` text: per table, (chains to remove, rules to delete, restore script).

    Pure: reads text, returns text. Tables with nothing of kube-proxy's are absent.
    """
    keep = frozenset(keep)
    tables: dict[str, tuple[list[str], list[str]]] = {}  # table -> (chains, rules)
    table = None
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            tables[table] = ([], [])
        elif table and line.startswith(":"):
            tables[table][0].append(line[1:].split()[0])
        elif table and line.startswith("-A "):
            tables[table][1].append(line)
    plans = {}
    for name, (chains, rules) in tables.items():
        doomed = [c for c in chains if _is_kube_proxy_chain(c, keep)]
        if not doomed:
            continue
        doomed_set = set(doomed)
        # Rules inside doomed chains go with their chain (-F); only references from chains we keep need -D.
        deletes = [r for r in rules if r.split()[1] not in doomed_set and _jump_target(r) in doomed_set]
        script = [f"*{name}"]
        script += ["-D" + r[2:] for r in deletes]
        script += [f"-F {c}" for c in doomed]
        script += [f"-X {c}" for c in doomed]
        script.append("COMMIT")
        plans[name] = (doomed, deletes, "\n".join(script) + "\n")
    return plans


def _run(netns, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    if netns is not None:
        return netns.run_cmd(argv, check=False, input=stdin)
    return subprocess.run(argv, check=False, input=stdin, capture_output=True, text=True, timeout=30)


def _checked(netns, argv: list[str], stdin: str | None = None) -> str:
    proc = _run(netns, argv, stdin)
    if proc.returncode != 0:
        raise CleanupError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _nft_tables(netns) -> list[str]:
    out = _checked(netns, ["nft", "list", "tables"])
    found = []
    for line in out.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2] == NFT_TABLE:
            found.append(f"{words[1]} {words[2]}")
    return found


def cleanup_kube_proxy(
    netns=None,
    *,
    enabled: bool = True,
    dry_run: bool = False,
    families: Iterable[str] = IPTABLES_FAMILIES,
    keep: Iterable[str] = KUBELET_CHAINS,
) -> CleanupReport:
    """Remove kube-proxy's iptables chains and nftables tables in ``netns`` (None: this process's).

    ``enabled=False`` (FelixConfiguration ``bpfKubeProxyIptablesCleanupEnabled: false``)
    does nothing. ``dry_run`` reads and plans but changes nothing. A family whose tools
    are missing is skipped and noted in ``report.skipped``; a failing tool raises
    :class:`CleanupError`.
    """
    report = CleanupReport()
    if not enabled:
        report.skipped.append("bpfKubeProxyIptablesCleanupEnabled is false: kube-proxy's rules stay")
        return report
    for family in families:
        try:
            saved = _checked(netns, [f"{family}-save"])
        except FileNotFoundError:
            report.skipped.append(f"{family}-save not installed")
            continue
        for table, (chains, deletes, script) in plan_iptables_cleanup(saved, keep).items():
            key = f"{family} {table}"
            report.removed_chains[key] = chains
            if deletes:
                report.deleted_rules[key] = deletes
            report.scripts[key] = script
            if not dry_run:
                # --noflush: only our -D/-F/-X lines apply; the table is otherwise left as it is.
                _checked(netns, [f"{family}-restore", "--noflush", "-w"], script)
    try:
        tables = _nft_tables(netns)
    except FileNotFoundError:
        report.skipped.append("nft not installed")
        tables = []
    for table in tables:
        if not dry_run:
            _checked(netns, ["nft", "delete", "table", *table.split()])
        report.removed_nft_tables.append(table)
    return report
