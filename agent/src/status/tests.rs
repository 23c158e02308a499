//! Status computation tables.

use super::*;
use crate::kuberuntime::observe::ObservedSandbox;

const S: i64 = 1_000_000_000;

fn pod(policy: &str, containers: &[&str]) -> Pod {
    let list: Vec<_> = containers
        .iter()
        .map(|n| serde_json::json!({"name": n, "image": "busybox:1.36"}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"restartPolicy": policy, "containers": list},
    }))
    .expect("pod")
}

fn c(name: &str, attempt: u32, state: ContainerState, exit: i32) -> ObservedContainer {
    ObservedContainer {
        id: format!("{name}{attempt}"),
        name: name.into(),
        sandbox_id: "s".into(),
        attempt,
        state: Some(state),
        created_at: (attempt as i64 + 1) * S,
        started_at: (attempt as i64 + 1) * S,
        finished_at: if state == ContainerState::Exited {
            (attempt as i64 + 2) * S
        } else {
            0
        },
        exit_code: exit,
        restart_count: attempt as i32,
        image_ref: "sha256:abc".into(),
        ..Default::default()
    }
}

fn observed(ready: bool, containers: Vec<ObservedContainer>) -> ObservedPod {
    let mut o = ObservedPod {
        sandboxes: vec![ObservedSandbox {
            id: "s".into(),
            attempt: 0,
            state: if ready {
                SandboxState::Ready
            } else {
                SandboxState::NotReady
            },
            created_at: S,
            ips: vec!["10.88.0.5".into()],
        }],
        containers,
    };
    o.sort();
    o
}

fn status(pod: &Pod, o: &ObservedPod, reasons: &HashMap<String, WaitingReason>) -> PodStatus {
    let ctx = StatusContext {
        runtime_name: "containerd",
        reasons,
        host_ip: Some("192.0.2.1"),
        start_time: Timestamp::UNIX_EPOCH,
        terminating: false,
        probes: &HashMap::new(),
        resize_error: None,
    };
    compute(pod, o, &ctx, None, Timestamp::UNIX_EPOCH)
}

fn condition<'a>(s: &'a PodStatus, kind: &str) -> &'a str {
    s.conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .map(|c| c.status.as_str())
        .unwrap_or("missing")
}

#[test]
fn new_pod_is_pending_with_container_creating() {
    let p = pod("Always", &["a"]);
    let s = status(&p, &ObservedPod::default(), &HashMap::new());
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let cs = &s.container_statuses.as_ref().expect("statuses")[0];
    let waiting = cs
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(condition(&s, "Ready"), "False");
    assert_eq!(condition(&s, "PodScheduled"), "True");
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
}

#[test]
fn running_pod_reports_ids_ips_and_readiness() {
    let p = pod("Always", &["a"]);
    let s = status(
        &p,
        &observed(true, vec![c("a", 0, ContainerState::Running, 0)]),
        &HashMap::new(),
    );
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.5"));
    assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
    let cs = &s.container_statuses.as_ref().expect("statuses")[0];
    assert!(cs.ready);
    assert_eq!(cs.container_id.as_deref(), Some("containerd://a0"));
    assert_eq!(cs.image_id, "sha256:abc");
    assert_eq!(cs.image, "busybox:1.36");
    assert!(
        cs.state
            .as_ref()
            .and_then(|st| st.running.as_ref())
            .is_some()
    );
    assert_eq!(condition(&s, "Ready"), "True");
    assert_eq!(condition(&s, "ContainersReady"), "True");
    assert_eq!(condition(&s, "PodReadyToStartContainers"), "True");
}

#[test]
fn crash_loop_shows_waiting_reason_last_state_and_restart_count() {
    let p = pod("Always", &["a"]);
    let reasons = HashMap::from([(
        "a".to_string(),
        WaitingReason {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 20s".into(),
        },
    )]);
    let s = status(
        &p,
        &observed(
            true,
            vec![
                c("a", 2, ContainerState::Exited, 1),
                c("a", 1, ContainerState::Exited, 1),
            ],
        ),
        &reasons,
    );
    let cs = &s.container_statuses.as_ref().expect("statuses")[0];
    let waiting = cs
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(cs.restart_count, 2);
    let last = cs
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("lastState");
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert_eq!(
        s.phase.as_deref(),
        Some("Running"),
        "an Always pod restarting is Running"
    );
}

#[test]
fn image_pull_error_keeps_the_pod_pending() {
    let p = pod("Always", &["a"]);
    let reasons = HashMap::from([(
        "a".to_string(),
        WaitingReason {
            reason: "ErrImagePull".into(),
            message: "not found".into(),
        },
    )]);
    let s = status(&p, &observed(true, vec![]), &reasons);
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let cs = &s.container_statuses.as_ref().expect("statuses")[0];
    let waiting = cs
        .state
        .as_ref()
        .and_then(|st| st.waiting.as_ref())
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some("ErrImagePull"));
    assert_eq!(waiting.message.as_deref(), Some("not found"));
}

#[test]
fn phase_table_for_finished_containers() {
    // (policy, exit codes, expected phase)
    let table: [(&str, &[i32], &str); 6] = [
        ("Never", &[0], "Succeeded"),
        ("Never", &[3], "Failed"),
        ("Never", &[0, 1], "Failed"),
        ("OnFailure", &[0, 0], "Succeeded"),
        ("Always", &[0], "Running"),
        ("OnFailure", &[1], "Running"),
    ];
    for (policy, exits, expected) in table {
        let names: Vec<String> = (0..exits.len()).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = pod(policy, &refs);
        let containers = exits
            .iter()
            .enumerate()
            .map(|(i, e)| c(&names[i], 0, ContainerState::Exited, *e))
            .collect();
        let s = status(&p, &observed(false, containers), &HashMap::new());
        assert_eq!(s.phase.as_deref(), Some(expected), "{policy} {exits:?}");
        if expected != "Running" {
            assert_eq!(condition(&s, "Ready"), "False");
            let cs = &s.container_statuses.as_ref().expect("statuses")[0];
            let t = cs
                .state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .expect("terminated");
            assert_eq!(
                t.reason.as_deref(),
                Some(if exits[0] == 0 { "Completed" } else { "Error" })
            );
        }
    }
}

#[test]
fn transition_times_stay_while_status_is_unchanged() {
    let p = pod("Always", &["a"]);
    let o = observed(true, vec![c("a", 0, ContainerState::Running, 0)]);
    let reasons = HashMap::new();
    let probes = HashMap::new();
    let ctx = StatusContext {
        runtime_name: "containerd",
        reasons: &reasons,
        host_ip: None,
        start_time: Timestamp::UNIX_EPOCH,
        terminating: false,
        probes: &probes,
        resize_error: None,
    };
    let first = compute(&p, &o, &ctx, None, Timestamp::UNIX_EPOCH);
    let later = Timestamp::from_second(100).expect("ts");
    let second = compute(&p, &o, &ctx, Some(&first), later);
    assert_eq!(
        first, second,
        "nothing changed, so the status is equal and not re-published"
    );
}

#[test]
fn readiness_probe_results_drive_ready() {
    let p = pod("Always", &["a"]);
    let o = observed(true, vec![c("a", 0, ContainerState::Running, 0)]);
    let reasons = HashMap::new();
    let probes = HashMap::from([("a".to_string(), (true, false))]);
    let ctx = StatusContext {
        runtime_name: "containerd",
        reasons: &reasons,
        host_ip: None,
        start_time: Timestamp::UNIX_EPOCH,
        terminating: false,
        probes: &probes,
        resize_error: None,
    };
    let s = compute(&p, &o, &ctx, None, Timestamp::UNIX_EPOCH);
    assert!(!s.container_statuses.as_ref().expect("cs")[0].ready);
    assert_eq!(condition(&s, "Ready"), "False");
    assert_eq!(s.phase.as_deref(), Some("Running"));
}

#[test]
fn readiness_gates_hold_ready_until_their_condition_is_true() {
    let mut p = pod("Always", &["a"]);
    p.spec.as_mut().expect("spec").readiness_gates =
        Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
            condition_type: "example.com/lb-ready".into(),
        }]);
    let o = observed(true, vec![c("a", 0, ContainerState::Running, 0)]);
    let s = status(&p, &o, &HashMap::new());
    assert_eq!(condition(&s, "ContainersReady"), "True");
    assert_eq!(condition(&s, "Ready"), "False");
    p.status = Some(PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "example.com/lb-ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let s = status(&p, &o, &HashMap::new());
    assert_eq!(condition(&s, "Ready"), "True");
}
