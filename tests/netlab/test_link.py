"""Fidelity of the lab's link: what a UDP echo between two hosts measures against what was set.

Namespaces share CLOCK_MONOTONIC, so the delay of each packet is measured one way. Every bound
is wide enough for a loaded 2-core machine and the seeded randomness (``$NETLAB_SEED``).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT, require
from tests.netlab import GilbertElliott, Lab, prerequisites, reaper
from tests.netlab.probe import Result, result, start_echo, start_send

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def echo_pair(lab: Lab) -> tuple[str, str]:
    a, b = lab.add_host("alpha"), lab.add_host("bravo")
    start_echo(b)
    return a.name, b.name


def send(lab: Lab, count: int, interval_ms: float, size: int = 200) -> Result:
    return result(start_send(lab["alpha"], lab["bravo"], count, interval_ms, size=size))


def loss_runs(r: Result) -> list[int]:
    """Lengths of the runs of consecutive lost packets."""
    got, runs, run = r.received, [], 0
    for seq in range(len(r.sent)):
        if seq in got:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    return [*runs, run] if run else runs


def test_three_hosts_reach_each_other_and_counters_agree(netlab: Lab) -> None:
    hosts = [netlab.add_host(n) for n in ("alpha", "bravo", "exchange")]
    assert len({h.addr for h in hosts}) == 3
    for h in hosts:
        start_echo(h)
    pairs = [(hosts[i], hosts[(i + 1) % 3]) for i in range(3)]
    senders = [start_send(src, dst, 50, 5) for src, dst in pairs]
    results = [result(s) for s in senders]
    for r in results:
        assert r.errors == 0 and r.lost == 0
    counters = netlab.counters()
    for h in hosts:  # each host sent 50 and echoed 50; received as many
        assert counters[h.name]["egress"].forwarded == 100
        assert counters[h.name]["ingress"].forwarded == 100
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert all(h.ns in names and h.ns.startswith(netlab.prefix) for h in hosts)


def test_delay_60_jitter_10_one_way_in_order(netlab: Lab) -> None:
    echo_pair(netlab)
    netlab.link("alpha").set(delay_ms=60, jitter_ms=10, direction="egress")
    r = send(netlab, 250, 12)
    out = r.one_way_ms()
    back = [(x[3] - x[2]) / 1e6 for x in r.replies]
    assert r.lost == 0 and r.errors == 0
    assert 57 <= statistics.mean(out) <= 65, statistics.mean(out)
    # the forwarder is a Python thread: on a loaded host a packet can leave a little late,
    # never early; the shape is judged on the 95th percentile, the tail only loosely
    p95 = sorted(out)[int(len(out) * 0.95)]
    assert min(out) >= 49.5 and p95 <= 75 and max(out) <= 150, (min(out), p95, max(out))
    assert 4.0 <= statistics.pstdev(out) <= 8.0  # uniform ±10: 5.8
    assert statistics.median(back) < 5  # the way back is clean
    assert r.far_order() == sorted(r.far_order())  # jitter without reordering


def test_jitter_reorders_only_when_allowed(netlab: Lab) -> None:
    echo_pair(netlab)
    netlab.link("alpha").set(delay_ms=30, jitter_ms=10, reorder=True, direction="egress")
    order = send(netlab, 100, 2).far_order()
    assert order != sorted(order)
    assert sorted(order) == list(range(100))


def test_random_loss_2_percent(netlab: Lab) -> None:
    echo_pair(netlab)
    netlab.link("alpha").set(loss=0.02, direction="egress")
    r = send(netlab, 3000, 1)
    assert r.errors == 0  # lost silently: the sender sees no error
    assert 0.010 <= r.lost / 3000 <= 0.032, r.lost
    assert netlab.counters()["alpha"]["egress"].dropped["loss"] == r.lost
    assert statistics.mean(loss_runs(r)) < 1.5  # independent: nearly all single losses


def test_bursty_loss_comes_in_bursts(netlab: Lab) -> None:
    echo_pair(netlab)
    ge = GilbertElliott.from_mean(0.036, burst=4)
    assert abs(ge.mean_loss - 0.036) < 1e-9
    netlab.link("alpha").set(burst=ge, direction="egress")
    r = send(netlab, 3000, 1)
    runs = loss_runs(r)
    assert r.errors == 0
    assert 0.015 <= r.lost / 3000 <= 0.07, r.lost
    assert netlab.counters()["alpha"]["egress"].dropped["burst"] == r.lost
    assert statistics.mean(runs) >= 2.5, runs  # mean burst 4 (random loss: ~1)
    assert max(runs) >= 5


def test_outage_drops_everything_then_recovers(netlab: Lab) -> None:
    echo_pair(netlab)
    link = netlab.link("bravo")
    sender = start_send(netlab["alpha"], netlab["bravo"], 250, 10)
    time.sleep(0.8)
    begin = time.monotonic_ns()
    end = int(link.outage(1.0) * 1e9)
    assert link.is_down
    r = result(sender)
    assert not link.is_down
    assert r.errors == 0  # silent, no ENETUNREACH
    during = [i for i, t in enumerate(r.sent) if begin + 20e6 < t < end - 20e6]
    before = [i for i, t in enumerate(r.sent) if t < begin - 20e6]
    after = [i for i, t in enumerate(r.sent) if t > end + 50e6]
    assert len(during) >= 80 and len(before) >= 30 and len(after) >= 50
    assert not set(during) & r.received
    assert set(before) <= r.received and set(after) <= r.received
    assert netlab.counters()["bravo"]["ingress"].dropped["outage"] >= len(during)

    link.down()  # until brought up
    assert send(netlab, 20, 5).lost == 20
    link.up()
    assert send(netlab, 20, 5).lost == 0


def test_rate_limit_holds(netlab: Lab) -> None:
    echo_pair(netlab)
    netlab.link("alpha").set(rate_kbit=1000, queue_ms=100, direction="egress")
    r = send(netlab, 500, 4, size=1000)  # offered: 250 packets/s of 1028 IP bytes, 2 Mbit/s
    far = sorted(x[2] for x in r.replies)
    kbit = (len(far) - 1) * 1028 * 8 / ((far[-1] - far[0]) / 1e9) / 1000
    assert 900 <= kbit <= 1100, kbit
    assert 0.35 <= r.lost / 500 <= 0.6
    assert netlab.counters()["alpha"]["egress"].dropped["queue"] == r.lost
    assert max(r.one_way_ms()) <= 100 + 30  # the queue limit bounds the delay


def test_impairment_changes_mid_run(netlab: Lab) -> None:
    echo_pair(netlab)
    link = netlab.link("alpha")
    link.set(delay_ms=20, direction="egress")
    sender = start_send(netlab["alpha"], netlab["bravo"], 200, 10)
    time.sleep(1.0)
    change = time.monotonic_ns()
    link.set(delay_ms=80, loss=0.5, direction="egress")
    r = result(sender)
    before = r.one_way_ms(until_ns=change - 5_000_000)
    after = r.one_way_ms(since_ns=change + 5_000_000)
    assert before and after
    assert 19 <= statistics.median(before) <= 26
    assert 79 <= statistics.median(after) <= 86
    sent_after = sum(1 for t in r.sent if t > change + 5_000_000)
    assert 0.3 <= 1 - len(after) / sent_after <= 0.7  # the loss came with it


def test_namespaces_are_removed_after_the_test_process_is_killed() -> None:
    problem = prerequisites()
    require(problem is None, problem or "")
    script = textwrap.dedent(
        """
        import sys, time
        from tests.netlab import Lab
        lab = Lab()
        host = lab.add_host("alpha")
        host.popen(["sleep", "600"])
        print(lab.prefix, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    assert prefix and any(ns.startswith(prefix) for ns in reaper.namespaces())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(ns.startswith(prefix) for ns in reaper.namespaces()):
        assert time.monotonic() < deadline, "the reaper left the namespaces"
        time.sleep(0.1)


def test_two_labs_at_once_stay_apart(netlab: Lab) -> None:
    """Same host names and addresses, different namespaces: nothing crosses."""
    echo_pair(netlab)
    with Lab(seed=2) as other:
        a2, b2 = other.add_host("alpha"), other.add_host("bravo")
        assert (a2.addr, b2.addr) == (netlab["alpha"].addr, netlab["bravo"].addr)
        assert a2.ns != netlab["alpha"].ns
        r = result(start_send(a2, b2, 20, 5))  # no echo runs in the other lab's bravo
        assert r.lost == 20
        assert other.counters()["bravo"]["ingress"].forwarded == 20
    assert send(netlab, 20, 5).lost == 0
    assert netlab.counters()["bravo"]["ingress"].forwarded == 20
