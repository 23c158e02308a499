//! Table tests of the pure sync core.

use super::*;
use crate::kuberuntime::labels::container_hash;
use crate::kuberuntime::observe::{ObservedSandbox, SandboxState};
use crate::kuberuntime::resources::ContainerResources;

const S: i64 = 1_000_000_000;
const NOW: i64 = 1_000 * S;

fn pod(policy: &str, containers: &[&str], inits: &[&str]) -> Pod {
    let list = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|n| serde_json::json!({"name": n, "image": "busybox:1.36"}))
            .collect()
    };
    let mut spec = serde_json::json!({"restartPolicy": policy, "containers": list(containers)});
    if !inits.is_empty() {
        spec["initContainers"] = serde_json::Value::Array(list(inits));
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": spec,
    }))
    .expect("pod")
}

fn sandbox(id: &str, attempt: u32, ready: bool, created: i64) -> ObservedSandbox {
    ObservedSandbox {
        id: id.into(),
        attempt,
        state: if ready {
            SandboxState::Ready
        } else {
            SandboxState::NotReady
        },
        created_at: created,
        ips: vec![],
    }
}

fn container(
    pod: &Pod,
    name: &str,
    sandbox: &str,
    attempt: u32,
    state: ContainerState,
    exit: i32,
) -> ObservedContainer {
    let spec = pod.spec.as_ref().expect("spec");
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name);
    ObservedContainer {
        id: format!("{name}-{attempt}"),
        name: name.into(),
        sandbox_id: sandbox.into(),
        attempt,
        state: Some(state),
        created_at: (attempt as i64 + 1) * S,
        started_at: (attempt as i64 + 1) * S,
        finished_at: if state == ContainerState::Exited {
            NOW - 2 * S
        } else {
            0
        },
        exit_code: exit,
        hash: c.map(container_hash).unwrap_or_default(),
        restart_count: attempt as i32,
        ..Default::default()
    }
}

fn observed(sandboxes: Vec<ObservedSandbox>, containers: Vec<ObservedContainer>) -> ObservedPod {
    let mut o = ObservedPod {
        sandboxes,
        containers,
    };
    o.sort();
    o
}

fn starts(a: &PodActions) -> Vec<(&str, u32)> {
    a.start
        .iter()
        .map(|s| (s.name.as_str(), s.attempt))
        .collect()
}

use ContainerState::{Created, Exited, Running, Unknown};

#[test]
fn new_pod_creates_a_sandbox_and_starts_every_container() {
    let p = pod("Always", &["a", "b"], &[]);
    let a = compute(&p, &ObservedPod::default(), &Backoff::default(), NOW);
    assert_eq!(a.create_sandbox, Some(0));
    assert!(!a.kill_pod);
    assert_eq!(starts(&a), vec![("a", 0), ("b", 0)]);
}

#[test]
fn running_pod_needs_nothing() {
    let p = pod("Always", &["a"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "a", "s1", 0, Running, 0)],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.changes_nothing() && a.backoff.is_empty(), "{a:?}");
}

#[test]
fn restart_policy_table_for_an_exited_container() {
    // (policy, exit code, restarted?, pod killed?)
    let table = [
        ("Always", 0, true, false),
        ("Always", 1, true, false),
        ("OnFailure", 0, false, true),
        ("OnFailure", 1, true, false),
        ("Never", 0, false, true),
        ("Never", 3, false, true),
    ];
    for (policy, exit, restarted, killed) in table {
        let p = pod(policy, &["a"], &[]);
        let o = observed(
            vec![sandbox("s1", 0, true, S)],
            vec![container(&p, "a", "s1", 0, Exited, exit)],
        );
        let a = compute(&p, &o, &Backoff::default(), NOW);
        assert_eq!(
            !a.start.is_empty(),
            restarted,
            "{policy} exit {exit}: {a:?}"
        );
        assert_eq!(a.kill_pod, killed, "{policy} exit {exit}: {a:?}");
        if restarted {
            assert_eq!(starts(&a), vec![("a", 1)], "attempt grows");
            assert_eq!(a.start[0].replaces_finished_at, Some(NOW - 2 * S));
            assert_eq!(a.sandbox_id.as_deref(), Some("s1"));
        }
    }
}

#[test]
fn crash_loop_waits_for_the_backoff() {
    let p = pod("Always", &["a"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "a", "s1", 1, Exited, 1)],
    );
    let key = backoff_key(&p, &p.spec.as_ref().expect("spec").containers[0]);
    let mut b = Backoff::default();
    b.next(&key, NOW - 60 * S); // first failure, restarted at once
    let a = compute(&p, &o, &b, NOW);
    assert!(a.start.is_empty());
    assert_eq!(
        a.backoff,
        vec![Waiting {
            name: "a".into(),
            remaining: Duration::from_secs(8),
            backoff: Duration::from_secs(10)
        }]
    );
    assert!(!a.kill_pod, "a container in back-off keeps the pod alive");
    // Once the back-off has passed, it restarts.
    let a = compute(&p, &o, &b, NOW + 9 * S);
    assert_eq!(starts(&a), vec![("a", 2)]);
}

#[test]
fn other_containers_keep_running_while_one_restarts() {
    let p = pod("Always", &["a", "b"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "a", "s1", 0, Running, 0),
            container(&p, "b", "s1", 0, Exited, 2),
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(starts(&a), vec![("b", 1)]);
    assert!(a.kill.is_empty() && !a.kill_pod);
}

#[test]
fn dead_sandbox_is_replaced_and_containers_restarted() {
    let p = pod("Always", &["a"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![container(&p, "a", "s1", 0, Exited, 137)],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod);
    assert_eq!(a.create_sandbox, Some(1));
    assert_eq!(starts(&a), vec![("a", 1)]);
}

#[test]
fn two_ready_sandboxes_are_reconciled_into_a_new_one() {
    let p = pod("Always", &["a"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, true, S), sandbox("s2", 1, true, 2 * S)],
        vec![],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod);
    assert_eq!(a.create_sandbox, Some(2));
}

#[test]
fn finished_never_pod_gets_no_new_sandbox() {
    let p = pod("Never", &["a"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![container(&p, "a", "s1", 0, Exited, 0)],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(a.create_sandbox, None);
    assert!(a.start.is_empty());
}

#[test]
fn on_failure_new_sandbox_skips_succeeded_containers() {
    let p = pod("OnFailure", &["ok", "bad"], &[]);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![
            container(&p, "ok", "s1", 0, Exited, 0),
            container(&p, "bad", "s1", 0, Exited, 1),
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(a.create_sandbox, Some(1));
    assert_eq!(starts(&a), vec![("bad", 1)]);
}

#[test]
fn changed_spec_restarts_the_running_container() {
    let p = pod("Always", &["a"], &[]);
    let mut c = container(&p, "a", "s1", 0, Running, 0);
    c.hash = "stale".into();
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![c]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(a.kill.len(), 1);
    assert_eq!(a.kill[0].id, "a-0");
    assert_eq!(starts(&a), vec![("a", 1)]);
}

#[test]
fn created_or_unknown_containers_are_started_again() {
    let p = pod("Always", &["a"], &[]);
    for state in [Created, Unknown] {
        let o = observed(
            vec![sandbox("s1", 0, true, S)],
            vec![container(&p, "a", "s1", 0, state, 0)],
        );
        let a = compute(&p, &o, &Backoff::default(), NOW);
        assert_eq!(starts(&a), vec![("a", 1)], "{state:?}");
        assert_eq!(a.kill.len(), usize::from(state == Unknown), "{state:?}");
    }
}

#[test]
fn init_containers_run_one_at_a_time_before_app_containers() {
    let p = pod("Always", &["app"], &["i1", "i2"]);
    let a = compute(&p, &ObservedPod::default(), &Backoff::default(), NOW);
    assert_eq!(a.create_sandbox, Some(0));
    assert_eq!(starts(&a), vec![("i1", 0)]);
    assert!(a.start[0].init);

    let running = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "i1", "s1", 0, Running, 0)],
    );
    assert!(
        compute(&p, &running, &Backoff::default(), NOW)
            .start
            .is_empty()
    );

    let first_done = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "i1", "s1", 0, Exited, 0)],
    );
    assert_eq!(
        starts(&compute(&p, &first_done, &Backoff::default(), NOW)),
        vec![("i2", 0)]
    );

    let all_done = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "i1", "s1", 0, Exited, 0),
            container(&p, "i2", "s1", 0, Exited, 0),
        ],
    );
    assert_eq!(
        starts(&compute(&p, &all_done, &Backoff::default(), NOW)),
        vec![("app", 0)]
    );
}

#[test]
fn failed_init_container_is_retried_or_fails_the_pod() {
    let p = pod("Always", &["app"], &["i1"]);
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "i1", "s1", 0, Exited, 1)],
    );
    assert_eq!(
        starts(&compute(&p, &o, &Backoff::default(), NOW)),
        vec![("i1", 1)]
    );

    let never = pod("Never", &["app"], &["i1"]);
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&never, "i1", "s1", 0, Exited, 1)],
    );
    let a = compute(&never, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod);
    assert!(a.start.is_empty());
}

#[test]
fn garbage_keeps_two_instances_per_container_and_drops_unused_sandboxes() {
    let p = pod("Always", &["a"], &[]);
    let o = observed(
        vec![
            sandbox("s2", 1, true, 5 * S),
            sandbox("s1", 0, false, S),
            sandbox("s0", 0, false, 0),
        ],
        vec![
            container(&p, "a", "s2", 3, Running, 0),
            container(&p, "a", "s1", 2, Exited, 1),
            container(&p, "a", "s1", 1, Exited, 1),
            container(&p, "a", "s1", 0, Exited, 1),
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(a.remove_containers, vec!["a-1", "a-0"]);
    assert_eq!(
        a.remove_sandboxes,
        vec!["s0"],
        "s1 still holds the lastState instance"
    );
    assert!(a.start.is_empty() && !a.kill_pod);
}

#[test]
fn native_sidecars_start_in_order_keep_running_and_are_restarted() {
    let mut p = pod("Never", &["app"], &["sidecar", "setup"]);
    p.spec
        .as_mut()
        .expect("spec")
        .init_containers
        .as_mut()
        .expect("inits")[0]
        .restart_policy = Some("Always".into());
    // The sidecar starts first.
    assert_eq!(
        starts(&compute(
            &p,
            &ObservedPod::default(),
            &Backoff::default(),
            NOW
        )),
        vec![("sidecar", 0)]
    );
    // Once it runs, the next init container starts without waiting for it to exit.
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "sidecar", "s1", 0, Running, 0)],
    );
    assert_eq!(
        starts(&compute(&p, &o, &Backoff::default(), NOW)),
        vec![("setup", 0)]
    );
    // Then the app, with the sidecar still running.
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "sidecar", "s1", 0, Running, 0),
            container(&p, "setup", "s1", 0, Exited, 0),
        ],
    );
    assert_eq!(
        starts(&compute(&p, &o, &Backoff::default(), NOW)),
        vec![("app", 0)]
    );
    // A sidecar that stops is restarted even under restartPolicy Never.
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "sidecar", "s1", 0, Exited, 1),
            container(&p, "setup", "s1", 0, Exited, 0),
            container(&p, "app", "s1", 0, Running, 0),
        ],
    );
    assert_eq!(
        starts(&compute(&p, &o, &Backoff::default(), NOW)),
        vec![("sidecar", 1)]
    );
    // When the app finishes, the pod (sidecar included) is stopped.
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "sidecar", "s1", 0, Running, 0),
            container(&p, "setup", "s1", 0, Exited, 0),
            container(&p, "app", "s1", 0, Exited, 0),
        ],
    );
    assert!(compute(&p, &o, &Backoff::default(), NOW).kill_pod);
}

fn inputs<'a>(
    pod: &'a Pod,
    observed: &'a ObservedPod,
    backoff: &'a Backoff,
    probe_failures: &'a [ProbeFailure],
) -> SyncInputs<'a> {
    SyncInputs {
        pod,
        observed,
        backoff,
        now: NOW,
        pod_start_time: None,
        probe_failures,
    }
}

fn liveness_failure(c: &ObservedContainer) -> ProbeFailure {
    ProbeFailure {
        container_id: c.id.clone(),
        container_name: c.name.clone(),
        message: format!(
            "Container {} failed liveness probe, will be restarted",
            c.name
        ),
    }
}

fn kills(a: &PodActions) -> Vec<(&str, &str)> {
    a.kill
        .iter()
        .map(|k| (k.id.as_str(), k.reason.as_str()))
        .collect()
}

#[test]
fn liveness_failure_kills_the_container_and_the_next_turn_restarts_it() {
    for policy in ["Always", "OnFailure"] {
        let p = pod(policy, &["a", "b"], &[]);
        let running = container(&p, "a", "s1", 0, Running, 0);
        let failures = [liveness_failure(&running)];
        let o = observed(
            vec![sandbox("s1", 0, true, S)],
            vec![running, container(&p, "b", "s1", 0, Running, 0)],
        );
        let b = Backoff::default();
        let a = compute_with(&inputs(&p, &o, &b, &failures));
        assert_eq!(
            kills(&a),
            vec![(
                "a-0",
                "Container a failed liveness probe, will be restarted"
            )],
            "{policy}"
        );
        assert!(a.start.is_empty(), "{policy}: restarted next turn: {a:?}");
        assert!(!a.kill_pod, "{policy}");

        // Next turn: the killed instance has exited; the probe result still names it.
        let o = observed(
            vec![sandbox("s1", 0, true, S)],
            vec![
                container(&p, "a", "s1", 0, Exited, 137),
                container(&p, "b", "s1", 0, Running, 0),
            ],
        );
        let a = compute_with(&inputs(&p, &o, &b, &failures));
        assert_eq!(starts(&a), vec![("a", 1)], "{policy}");
        assert!(a.kill.is_empty(), "{policy}");
    }
}

#[test]
fn liveness_failure_of_the_only_container_of_a_never_pod_ends_the_pod() {
    let p = pod("Never", &["a"], &[]);
    let running = container(&p, "a", "s1", 0, Running, 0);
    let failures = [liveness_failure(&running)];
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![running]);
    let b = Backoff::default();
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert_eq!(kills(&a).len(), 1, "{a:?}");
    assert!(a.start.is_empty() && !a.kill_pod, "{a:?}");

    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![container(&p, "a", "s1", 0, Exited, 137)],
    );
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert!(a.kill_pod && a.start.is_empty(), "{a:?}");
}

#[test]
fn probe_failure_of_an_older_instance_is_ignored() {
    let p = pod("Always", &["a"], &[]);
    let old = container(&p, "a", "s1", 0, Exited, 137);
    let failures = [liveness_failure(&old)];
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![old, container(&p, "a", "s1", 1, Running, 0)],
    );
    let b = Backoff::default();
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert!(a.changes_nothing(), "{a:?}");

    // An instance in a sandbox that is being replaced is not probed into a kill of its own.
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![container(&p, "a", "s1", 0, Running, 0)],
    );
    let failures = [liveness_failure(&o.containers[0])];
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert!(a.kill.is_empty() && a.kill_pod, "{a:?}");
}

#[test]
fn failed_startup_probe_of_a_sidecar_kills_it_and_the_next_turn_restarts_it() {
    let mut p = pod("Never", &["app"], &["sidecar"]);
    p.spec
        .as_mut()
        .expect("spec")
        .init_containers
        .as_mut()
        .expect("inits")[0]
        .restart_policy = Some("Always".into());
    let sidecar = container(&p, "sidecar", "s1", 0, Running, 0);
    let failures = [ProbeFailure {
        message: "Container sidecar failed startup probe, will be restarted".into(),
        ..liveness_failure(&sidecar)
    }];
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![sidecar, container(&p, "app", "s1", 0, Running, 0)],
    );
    let b = Backoff::default();
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert_eq!(
        kills(&a),
        vec![(
            "sidecar-0",
            "Container sidecar failed startup probe, will be restarted"
        )]
    );
    assert!(a.start.is_empty() && !a.kill_pod, "{a:?}");

    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![
            container(&p, "sidecar", "s1", 0, Exited, 137),
            container(&p, "app", "s1", 0, Running, 0),
        ],
    );
    let a = compute_with(&inputs(&p, &o, &b, &failures));
    assert_eq!(
        starts(&a),
        vec![("sidecar", 1)],
        "sidecars restart under Never"
    );
}

fn with_deadline(mut p: Pod, seconds: i64) -> Pod {
    p.spec.as_mut().expect("spec").active_deadline_seconds = Some(seconds);
    p
}

#[test]
fn active_deadline_fails_and_kills_the_pod() {
    let p = with_deadline(pod("Always", &["a"], &[]), 30);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![container(&p, "a", "s1", 0, Exited, 1)],
    );
    let b = Backoff::default();
    // (started this long ago, failed?)
    for (ago, failed) in [(29, false), (30, true), (31, true)] {
        let a = compute_with(&SyncInputs {
            pod_start_time: Some(NOW - ago * S),
            ..inputs(&p, &o, &b, &[])
        });
        assert_eq!(a.fail_pod.is_some(), failed, "{ago}s: {a:?}");
        assert!(a.kill_pod, "{ago}s: the dead sandbox is stopped either way");
        if failed {
            assert_eq!(a.fail_pod, Some(PodFailure::deadline_exceeded()));
            assert_eq!(
                a.fail_pod.as_ref().map(|f| f.reason.as_str()),
                Some("DeadlineExceeded")
            );
            assert!(a.start.is_empty() && a.create_sandbox.is_none(), "{a:?}");
            assert!(!a.changes_nothing());
        } else {
            assert_eq!(a.create_sandbox, Some(1));
        }
    }
}

#[test]
fn active_deadline_needs_a_start_time_and_a_deadline() {
    let b = Backoff::default();
    let o = ObservedPod::default();
    let no_deadline = pod("Always", &["a"], &[]);
    let p = with_deadline(no_deadline.clone(), 30);
    let long_ago = Some(NOW - 3_600 * S);
    for (pod, start) in [(&no_deadline, long_ago), (&p, None)] {
        let a = compute_with(&SyncInputs {
            pod_start_time: start,
            ..inputs(pod, &o, &b, &[])
        });
        assert!(a.fail_pod.is_none());
        assert_eq!(starts(&a), vec![("a", 0)]);
    }
}

#[test]
fn deadline_remaining_counts_down_to_zero() {
    let p = with_deadline(pod("Always", &["a"], &[]), 30);
    assert_eq!(
        deadline_remaining(&p, Some(NOW - 10 * S), NOW),
        Some(Duration::from_secs(20))
    );
    assert_eq!(
        deadline_remaining(&p, Some(NOW - 45 * S), NOW),
        Some(Duration::ZERO)
    );
    assert_eq!(deadline_remaining(&p, None, NOW), None);
    assert_eq!(
        deadline_remaining(&pod("Always", &["a"], &[]), Some(NOW), NOW),
        None
    );
}

#[test]
fn new_sandbox_runs_every_init_container_again() {
    let p = pod("Always", &["app"], &["i1", "i2"]);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![
            container(&p, "i1", "s1", 0, Exited, 0),
            container(&p, "i2", "s1", 0, Exited, 0),
            container(&p, "app", "s1", 0, Exited, 137),
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod);
    assert_eq!(a.create_sandbox, Some(1));
    assert_eq!(
        starts(&a),
        vec![("i1", 1)],
        "first init again, attempt carried on"
    );
    assert!(a.start[0].init);
}

#[test]
fn kept_sandbox_counts_only_its_own_init_containers() {
    let p = pod("Always", &["app"], &["i1", "i2"]);
    let mut old_i2 = container(&p, "i2", "s1", 0, Exited, 0);
    old_i2.created_at = S / 2;
    let o = observed(
        vec![sandbox("s2", 1, true, 5 * S), sandbox("s1", 0, false, S)],
        vec![
            container(&p, "i1", "s2", 1, Exited, 0),
            container(&p, "i1", "s1", 0, Exited, 0),
            old_i2,
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(a.sandbox_id.as_deref(), Some("s2"));
    assert_eq!(starts(&a), vec![("i2", 1)], "i2 did not run in s2 yet");
    assert!(!a.kill_pod);
}

#[test]
fn on_failure_pod_whose_app_containers_succeeded_gets_no_sandbox_for_its_inits() {
    let p = pod("OnFailure", &["app"], &["i1"]);
    let o = observed(
        vec![sandbox("s1", 0, false, S)],
        vec![
            container(&p, "i1", "s1", 0, Exited, 0),
            container(&p, "app", "s1", 0, Exited, 0),
        ],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod);
    assert_eq!(a.create_sandbox, None);
    assert!(a.start.is_empty());
}

#[test]
fn instance_left_running_in_an_old_sandbox_is_stopped_not_duplicated() {
    // A stop that failed while the sandbox was replaced left `a` running in s1; s2 has its dead
    // successor. Restarting `a` in s2 without stopping the old one would run it twice.
    let p = pod("Always", &["a"], &[]);
    let mut orphan = container(&p, "a", "s1", 0, Running, 0);
    orphan.created_at = S / 2;
    let o = observed(
        vec![sandbox("s2", 1, true, 5 * S), sandbox("s1", 0, false, S)],
        vec![container(&p, "a", "s2", 1, Exited, 1), orphan],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(
        kills(&a),
        vec![("a-0", "Container a was replaced by a newer instance")]
    );
    assert_eq!(starts(&a), vec![("a", 2)]);
    assert!(!a.kill_pod, "{a:?}");
}

/// Sets a container's resources and resize policy (as JSON) in `p`.
fn resized(mut p: Pod, name: &str, resources: serde_json::Value, policy: serde_json::Value) -> Pod {
    let spec = p.spec.as_mut().expect("spec");
    let c = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
        .find(|c| c.name == name)
        .expect("container");
    c.resources = Some(serde_json::from_value(resources).expect("resources"));
    c.resize_policy = Some(serde_json::from_value(policy).expect("policy"));
    p
}

/// The container's settings as the runtime would hold them had it been created with `resources`.
fn applied_as(p: &Pod, name: &str, resources: serde_json::Value) -> ContainerResources {
    let created = resized(p.clone(), name, resources, serde_json::json!([]));
    let (c, _) = crate::pod_workers::runtime_manager::container_spec(&created, name).expect("c");
    ContainerResources::desired(&created, c)
}

fn small() -> serde_json::Value {
    serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}})
}

fn big() -> serde_json::Value {
    serde_json::json!({"requests": {"cpu": "300m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
}

fn restart_on(resource: &str) -> serde_json::Value {
    serde_json::json!([{"resourceName": resource, "restartPolicy": "RestartContainer"}])
}

#[test]
fn a_resize_without_restart_updates_the_running_container_in_place() {
    let p = resized(
        pod("Always", &["a"], &[]),
        "a",
        big(),
        serde_json::json!([]),
    );
    let mut running = container(&p, "a", "s1", 0, Running, 0);
    running.resources = Some(applied_as(&p, "a", small()));
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![running]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(
        a.update_resources,
        vec![ResourceUpdate {
            id: "a-0".into(),
            name: "a".into(),
            from: applied_as(&p, "a", small()),
            to: applied_as(&p, "a", big()),
        }]
    );
    assert!(
        a.kill.is_empty() && a.start.is_empty() && !a.kill_pod,
        "{a:?}"
    );
    assert!(!a.changes_nothing());
}

#[test]
fn resize_policy_table() {
    // (policy, new resources, restarted?, updated?)
    let cpu_only = serde_json::json!({"requests": {"cpu": "300m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}});
    let memory_only = serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}});
    let memory_request_only = serde_json::json!({"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}});
    let table = [
        (serde_json::json!([]), big(), false, true),
        (restart_on("cpu"), cpu_only.clone(), true, false),
        (restart_on("cpu"), memory_only.clone(), false, true),
        (restart_on("memory"), memory_only.clone(), true, false),
        (restart_on("memory"), cpu_only, false, true),
        (restart_on("memory"), big(), true, false),
        (restart_on("memory"), small(), false, false),
        // A memory request is not applied to a container: nothing to do, whatever the policy.
        (restart_on("memory"), memory_request_only, false, false),
    ];
    for (policy, resources, restarted, updated) in table {
        let p = resized(
            pod("Always", &["a", "b"], &[]),
            "a",
            resources.clone(),
            policy.clone(),
        );
        let mut a0 = container(&p, "a", "s1", 0, Running, 0);
        a0.resources = Some(applied_as(&p, "a", small()));
        let o = observed(
            vec![sandbox("s1", 0, true, S)],
            vec![a0, container(&p, "b", "s1", 0, Running, 0)],
        );
        let a = compute(&p, &o, &Backoff::default(), NOW);
        let case = format!("policy {policy} resources {resources}: {a:?}");
        assert_eq!(!a.update_resources.is_empty(), updated, "{case}");
        if restarted {
            assert_eq!(
                kills(&a),
                vec![("a-0", "Container a resize requires restart")],
                "{case}"
            );
            assert_eq!(starts(&a), vec![("a", 1)], "{case}");
            assert_eq!(a.start[0].replaces_finished_at, None, "no back-off");
        } else {
            assert!(a.kill.is_empty() && a.start.is_empty(), "{case}");
        }
        assert!(!a.kill_pod, "{case}");
    }
}

#[test]
fn only_a_running_container_with_known_resources_is_updated() {
    let p = resized(
        pod("Always", &["a"], &[]),
        "a",
        big(),
        serde_json::json!([]),
    );
    // The runtime reports nothing and the agent applied nothing it remembers: left alone.
    let unknown = container(&p, "a", "s1", 0, Running, 0);
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![unknown]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.changes_nothing(), "{a:?}");
    // An exited instance is not updated: it is restarted, with the new resources.
    let mut exited = container(&p, "a", "s1", 0, Exited, 1);
    exited.resources = Some(applied_as(&p, "a", small()));
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![exited]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.update_resources.is_empty());
    assert_eq!(starts(&a), vec![("a", 1)]);
    // A dead sandbox: everything starts again, nothing is updated.
    let mut running = container(&p, "a", "s1", 0, Running, 0);
    running.resources = Some(applied_as(&p, "a", small()));
    let o = observed(vec![sandbox("s1", 0, false, S)], vec![running]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert!(a.kill_pod && a.update_resources.is_empty(), "{a:?}");
}

#[test]
fn a_resized_container_is_not_restarted_for_its_changed_spec() {
    // The container was created with other resources (its hash annotation is of the spec without
    // them, so it still matches), and with an agent before in-place resize (whole-spec hash).
    let created = resized(
        pod("Always", &["a"], &[]),
        "a",
        small(),
        serde_json::json!([]),
    );
    let p = resized(created.clone(), "a", big(), serde_json::json!([]));
    let mut running = container(&created, "a", "s1", 0, Running, 0);
    running.resources = Some(applied_as(&p, "a", big()));
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![running.clone()]);
    assert!(compute(&p, &o, &Backoff::default(), NOW).changes_nothing());
    let spec = created.spec.as_ref().expect("spec");
    running.hash = {
        use md5::{Digest, Md5};
        let mut hasher = Md5::new();
        hasher.update(serde_json::to_vec(&spec.containers[0]).expect("json"));
        hex::encode(&hasher.finalize()[..8])
    };
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![running]);
    assert!(
        compute(&created, &o, &Backoff::default(), NOW)
            .kill
            .is_empty(),
        "an old agent's hash of the same spec matches"
    );
}

#[test]
fn running_sidecars_are_resized_too() {
    let mut p = pod("Always", &["app"], &["sidecar"]);
    p.spec
        .as_mut()
        .expect("spec")
        .init_containers
        .as_mut()
        .expect("inits")[0]
        .restart_policy = Some("Always".into());
    let p = resized(p, "sidecar", big(), serde_json::json!([]));
    let mut sidecar = container(&p, "sidecar", "s1", 0, Running, 0);
    sidecar.resources = Some(applied_as(&p, "sidecar", small()));
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![sidecar.clone(), container(&p, "app", "s1", 0, Running, 0)],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    let updated: Vec<&str> = a.update_resources.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(updated, vec!["sidecar-0"]);
    assert!(a.kill.is_empty() && a.start.is_empty());
    // With RestartContainer it is stopped and started again in the same turn, as an init container.
    let p = resized(p, "sidecar", big(), restart_on("cpu"));
    let o = observed(
        vec![sandbox("s1", 0, true, S)],
        vec![sidecar, container(&p, "app", "s1", 0, Running, 0)],
    );
    let a = compute(&p, &o, &Backoff::default(), NOW);
    assert_eq!(
        kills(&a),
        vec![("sidecar-0", "Container sidecar resize requires restart")]
    );
    assert_eq!(starts(&a), vec![("sidecar", 1)]);
    assert!(a.start[0].init);
}

#[test]
fn updates_that_lower_something_go_first() {
    let p = pod("Always", &["grow", "shrink"], &[]);
    let p = resized(p, "grow", big(), serde_json::json!([]));
    let p = resized(p, "shrink", small(), serde_json::json!([]));
    let mut grow = container(&p, "grow", "s1", 0, Running, 0);
    grow.resources = Some(applied_as(&p, "grow", small()));
    let mut shrink = container(&p, "shrink", "s1", 0, Running, 0);
    shrink.resources = Some(applied_as(&p, "shrink", big()));
    let o = observed(vec![sandbox("s1", 0, true, S)], vec![grow, shrink]);
    let a = compute(&p, &o, &Backoff::default(), NOW);
    let order: Vec<&str> = a.update_resources.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(order, vec!["shrink", "grow"]);
}
