"""The scheduler-trace summary of bench.core_sharing, on lines as `perf script` prints them."""
from bench.core_sharing import parse_sched, role

LOOP, MEMBER, HAPROXY = 100, 200, 300
LINES = [
    # preempted (state R) with a member next, then asleep (state S) with HAProxy next
    f" ray::ServeRepl {LOOP} [001] 10.000001: sched:sched_switch: prev_comm=ray::ServeRepl prev_pid={LOOP} "
    f"prev_prio=135 prev_state=R ==> next_comm=ray::ServeRepl next_pid={MEMBER} next_prio=135",
    f" ray::ServeRepl {LOOP} [001] 10.000002: sched:sched_switch: prev_comm=ray::ServeRepl prev_pid={LOOP} "
    f"prev_prio=135 prev_state=S ==> next_comm=haproxy next_pid={HAPROXY} next_prio=120",
    # the router wakes a member onto its own CPU, then one onto the other, then HAProxy
    f" ray::ServeRepl {LOOP} [001] 10.000003: sched:sched_wakeup: comm=ray::ServeRepl pid={MEMBER} prio=135 target_cpu=001",
    f" ray::ServeRepl {LOOP} [001] 10.000004: sched:sched_wakeup: comm=ray::ServeRepl pid={MEMBER} prio=135 target_cpu=000",
    f" ray::ServeRepl {LOOP} [000] 10.000005: sched:sched_wakeup: comm=haproxy pid={HAPROXY} prio=120 target_cpu=001",
    # other threads' events and noise do not count
    f" haproxy {HAPROXY} [000] 10.000006: sched:sched_wakeup: comm=ray::ServeRepl pid={LOOP} prio=135 target_cpu=000",
    f" haproxy {HAPROXY} [000] 10.000007: sched:sched_switch: prev_comm=haproxy prev_pid={HAPROXY} prev_prio=120 "
    f"prev_state=R ==> next_comm=ray::ServeRepl next_pid={LOOP} next_prio=135",
    "not a trace line",
]


def test_parse_sched_counts_the_loop_threads_switches_and_wakeups() -> None:
    summary = parse_sched(LINES, LOOP, {MEMBER: "member", HAPROXY: "haproxy"}, seconds=2.0)
    assert (summary.preempted, summary.slept) == (1, 1)
    assert summary.next_after_preempted == {"member": 1}
    assert summary.wakeups == {"member": 2, "haproxy": 1}
    assert summary.wakeups_on_its_cpu == {"member": 1, "haproxy": 0}


def test_role_names_router_members_and_the_rest() -> None:
    assert role("ray::ServeReplica:bench:EnsembleRouter") == "router"
    assert role("ray::ServeReplica:lstm_v1-v1:lstm_v1-v1") == "member"
    assert role("ray::ServeReplica:bench:ControlPlane") == "ControlPlane"
    assert role("haproxy") == "haproxy"
