"""The restart policy on a fake clock: jittered backoff, reset after a stable run, the circuit."""

from __future__ import annotations

import random
from pathlib import Path

from protocol import parse_manifest
from runner.restart_policy import RestartPolicy, RestartSettings
from runner.supervisor import ActivationSpec

SETTINGS = RestartSettings(
    backoff_base_s=0.5,
    backoff_cap_s=30.0,
    stable_after_s=60.0,
    circuit_max_restarts=5,
    circuit_window_s=60.0,
    circuit_cooldown_s=300.0,
)


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling() -> None:
    policy = RestartPolicy(SETTINGS, random.Random(7))
    now = 0.0
    for n in range(5):
        now += 100.0  # far apart: the circuit never opens
        delay = policy.record_failure(now, ready_since=None)
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**n)
    many = RestartPolicy(SETTINGS, random.Random(1))
    delays = [many.record_failure(1000.0 * i, None) for i in range(1, 40)]
    assert max(delays) <= 30.0 and max(delays) > 15.0  # capped, yet spread over the range


def test_a_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(SETTINGS, random.Random(3))
    for i in range(6):
        policy.record_failure(100.0 * (i + 1), ready_since=None)
    assert policy._consecutive == 6
    policy.record_failure(2000.0, ready_since=2000.0 - 61.0)  # it had run 61 s
    assert policy._consecutive == 1


def test_too_many_restarts_in_the_window_open_the_circuit_then_a_probe() -> None:
    policy = RestartPolicy(SETTINGS, random.Random(5))
    for i in range(5):
        policy.record_failure(float(i), None)
        assert not policy.is_open(float(i))
    delay = policy.record_failure(5.0, None)  # the sixth within 60 s
    assert delay == 300.0 and policy.is_open(5.0) and policy.retry_after_s(5.0) == 300.0
    assert policy.is_open(304.0) and not policy.is_open(305.0)  # cool-down over: probe time
    policy.probe_failed(305.0)
    assert policy.is_open(306.0) and policy.retry_after_s(305.0) == 300.0
    policy.reset()
    assert not policy.is_open(306.0) and policy.restarts == 7


def test_failures_outside_the_window_do_not_count() -> None:
    policy = RestartPolicy(SETTINGS, random.Random(9))
    for i in range(20):
        policy.record_failure(61.0 * i, None)
    assert not policy.is_open(61.0 * 20)


def test_stderr_tails_are_scrubbed_of_secret_config_values() -> None:
    manifest = parse_manifest(
        'id = "com.example.p"\nversion = "1.0.0"\ndisplay_name = "P"\nprotocol_version = 1\n'
        '[[categories]]\nkind = "audit_sink"\n'
        '[[config]]\nname = "token"\nsecret = true\n[[config]]\nname = "region"\n'
    )
    spec = ActivationSpec(
        "t", "com.example.p", Path("/x"), manifest, {"token": "s3cr3t-value", "region": "eu-west"}
    )
    line = "auth failed with token s3cr3t-value in eu-west"
    assert spec.scrub(line) == "auth failed with token *** in eu-west"
