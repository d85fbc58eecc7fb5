"""The probe: every layer tried in a throw-away child, and the doctor table built from it."""

from __future__ import annotations

import dataclasses

from sandbox import (
    CgroupSupport,
    CgroupVersion,
    Layer,
    LayerStatus,
    SandboxPolicy,
    SandboxReport,
    format_table,
    required_layers_missing,
)

PROBED = {
    Layer.RLIMITS,
    Layer.CREDENTIALS,
    Layer.NAMESPACES,
    Layer.LANDLOCK,
    Layer.SECCOMP,
    Layer.NO_NEW_PRIVS,
    Layer.PDEATHSIG,
    Layer.CGROUP,
}


def _report(*missing: Layer) -> SandboxReport:
    rows = tuple(LayerStatus(layer, layer not in missing, "because") for layer in PROBED)
    return SandboxReport(rows, 7, CgroupSupport(CgroupVersion.NONE, (), "none here"))


def test_probe_reports_every_layer(kernel_report: SandboxReport) -> None:
    assert {row.layer for row in kernel_report.rows} == PROBED
    assert kernel_report.is_available(Layer.RLIMITS)
    assert kernel_report.is_available(Layer.NO_NEW_PRIVS)
    assert kernel_report.is_available(Layer.SESSION)  # not probed: always there
    landlock = kernel_report.status(Layer.LANDLOCK)
    assert landlock.available == (kernel_report.landlock_abi >= 1)
    if landlock.available:
        assert f"ABI {kernel_report.landlock_abi}" in landlock.reason


def test_doctor_table_lists_layers_and_activity(kernel_report: SandboxReport) -> None:
    table = format_table(kernel_report, SandboxPolicy(scratch_dir="/s", uid=61000))
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "available", "active", "detail"]
    assert len(lines) == 1 + len(PROBED)
    seccomp = next(line for line in lines if line.startswith("seccomp"))
    assert seccomp.split()[1:3] == (
        ["yes", "yes"] if kernel_report.is_available(Layer.SECCOMP) else ["no", "MISSING"]
    )
    assert format_table(kernel_report).splitlines()[0].split() == ["layer", "available", "detail"]


def test_missing_layers_are_those_the_policy_requests() -> None:
    policy = SandboxPolicy(scratch_dir="/s", uid=61000)
    report = _report(Layer.LANDLOCK, Layer.CGROUP)
    assert [row.layer for row in required_layers_missing(policy, report)] == [Layer.LANDLOCK]
    without = dataclasses.replace(policy, landlock=False)
    assert required_layers_missing(without, report) == []
    with_cgroup = dataclasses.replace(policy, cgroup_dirs=("/sys/fs/cgroup/x",))
    assert Layer.CGROUP in {row.layer for row in required_layers_missing(with_cgroup, report)}


def test_table_marks_missing_requested_layer() -> None:
    table = format_table(_report(Layer.SECCOMP), SandboxPolicy(scratch_dir="/s"))
    seccomp = next(line for line in table.splitlines() if line.startswith("seccomp"))
    assert seccomp.split()[1:3] == ["no", "MISSING"]
