"""Preflight decisions that need no privileges: version parsing, capability masks, reporting."""

from __future__ import annotations

import pytest

from calico_ebpf.cli.preflight import format_table
from calico_ebpf.errors import PreflightError
from calico_ebpf.preflight import (
    CAP_BPF,
    CAP_NET_ADMIN,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    Check,
    check_arch,
    check_capabilities,
    check_kernel,
    failures,
    kernel_supported,
    missing_capabilities,
    parse_cap_eff,
    parse_kernel_release,
    require,
)


@pytest.mark.parametrize(
    "release, ok",
    [
        ("4.18.0-193.el8.x86_64", True),     # RHEL 8.2: the oldest Red Hat kernel supported
        ("4.18.0-305.3.1.el8_4.x86_64", True),
        ("4.18.0-147.el8", False),           # RHEL 8.1
        ("4.18.0-192.el8.x86_64", False),
        ("3.10.0-1160.el7.x86_64", False),   # RHEL 7, however high the build
        ("5.2.0", False),
        ("5.2.21-generic", False),
        ("5.3", True),
        ("5.3.0-1-amd64", True),
        ("5.14.0-70.13.1.el9_0.x86_64", True),
        ("6.18.44", True),
        ("6.18.44-fc-v1045", True),
        ("4.19.0-193", False),               # build number only matters on Red Hat kernels
        ("not-a-kernel", False),
    ],
)
def test_kernel_support_matrix(release, ok):
    assert kernel_supported(release)[0] is ok
    assert check_kernel(release).ok is ok


def test_kernel_reasons_say_why():
    ok, why = kernel_supported("5.2.0")
    assert not ok and "5.2.0" in why and "5.3" in why
    ok, why = kernel_supported("4.18.0-147.el8")
    assert not ok and "Red Hat" in why and "4.18.0-193" in why


def test_parse_kernel_release():
    rel = parse_kernel_release("4.18.0-193.el8.x86_64")
    assert (rel.version, rel.build, rel.redhat) == ((4, 18, 0), 193, True)
    rel = parse_kernel_release("6.18.44-fc-v1045")
    assert (rel.version, rel.build, rel.redhat) == ((6, 18, 44), None, False)
    assert parse_kernel_release("5.3").version == (5, 3, 0)
    with pytest.raises(ValueError):
        parse_kernel_release("")


def test_parse_cap_eff():
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
    assert parse_cap_eff(status) == 0x1FFFFFFFFFF
    with pytest.raises(ValueError):
        parse_cap_eff("Name:\tx\n")


def bits(*caps: int) -> int:
    return sum(1 << c for c in caps)


@pytest.mark.parametrize(
    "mask, missing",
    [
        (bits(CAP_NET_ADMIN, CAP_SYS_ADMIN), []),
        (bits(CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON), []),
        (bits(CAP_NET_ADMIN, CAP_BPF), ["CAP_SYS_ADMIN (or CAP_BPF with CAP_PERFMON)"]),
        (bits(CAP_SYS_ADMIN), ["CAP_NET_ADMIN"]),
        (0, ["CAP_NET_ADMIN", "CAP_SYS_ADMIN (or CAP_BPF with CAP_PERFMON)"]),
    ],
)
def test_missing_capabilities(mask, missing):
    assert missing_capabilities(mask) == missing


def test_capability_check_names_what_is_missing():
    c = check_capabilities(0)
    assert not c.ok and c.required and "CAP_NET_ADMIN" in c.detail and "CAP_SYS_ADMIN" in c.detail
    assert check_capabilities(bits(CAP_NET_ADMIN, CAP_SYS_ADMIN)).ok


@pytest.mark.parametrize("machine, ok", [("x86_64", True), ("aarch64", True), ("arm64", True),
                                         ("armv7l", False), ("ppc64le", False), ("s390x", False)])
def test_arch(machine, ok):
    c = check_arch(machine)
    assert c.ok is ok
    if not ok:
        assert machine in c.detail


def test_failures_and_require_only_count_required_checks():
    checks = [Check("a", True, "fine"), Check("b", False, "broken"), Check("c", False, "advice", required=False)]
    assert failures(checks) == ["b: broken"]
    with pytest.raises(PreflightError) as exc:
        require(checks)
    assert exc.value.reasons == ["b: broken"]
    assert require([Check("a", True, "fine"), Check("c", False, "advice", required=False)])


def test_table_marks_fail_and_warn():
    table = format_table([Check("kernel", True, "ok kernel"), Check("btf", False, "missing"),
                          Check("tcx", False, "old libbpf", required=False)])
    lines = table.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert lines[1].split()[:2] == ["kernel", "ok"]
    assert lines[2].split()[:2] == ["btf", "FAIL"]
    assert lines[3].split()[:2] == ["tcx", "warn"]
