use super::*;

fn pod(spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = serde_json::json!([{"name": "c", "image": "i"}]);
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1"}, "spec": spec})).expect("pod")
}

fn c(p: &Pod) -> &Container {
    &p.spec.as_ref().expect("spec").containers[0]
}

const GI: i64 = 1 << 30;

#[test]
fn cpu_and_memory_follow_kubelets_formulas() {
    assert_eq!(milli_cpu_to_shares(0), 2);
    assert_eq!(milli_cpu_to_shares(1), 2);
    assert_eq!(milli_cpu_to_shares(250), 256);
    assert_eq!(milli_cpu_to_shares(1000), 1024);
    assert_eq!(milli_cpu_to_quota(500, 100_000), 50_000);
    assert_eq!(milli_cpu_to_quota(5, 100_000), 1000, "minimum quota");
    let p = pod(
        serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}}}]}),
    );
    let r = container_resources(&p, c(&p), 8 * GI);
    assert_eq!(
        (r.cpu_shares, r.cpu_quota, r.cpu_period),
        (256, 50_000, 100_000)
    );
    assert_eq!(r.memory_limit_in_bytes, 2 * GI);
    assert_eq!(r.oom_score_adj, 875, "burstable: 1000 - 1000*1Gi/8Gi");
}

#[test]
fn oom_score_by_qos() {
    let guaranteed = pod(
        serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}),
    );
    assert_eq!(oom_score_adj(&guaranteed, c(&guaranteed), 8 * GI), -997);
    let best = pod(serde_json::json!({}));
    assert_eq!(oom_score_adj(&best, c(&best), 8 * GI), 1000);
    let huge = pod(
        serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": "8Gi"}}}]}),
    );
    assert_eq!(oom_score_adj(&huge, c(&huge), 8 * GI), 2, "clamped to 2");
}

#[test]
fn security_context_container_overrides_pod() {
    let p = pod(serde_json::json!({
        "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000], "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "i", "securityContext": {
            "runAsUser": 2000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}
        }}]
    }));
    let image = ImageUser {
        uid: Some(7),
        username: "",
    };
    let sc = container_security(&p, c(&p), None, image);
    assert_eq!(sc.run_as_user.map(|v| v.value), Some(2000));
    assert_eq!(sc.run_as_group.map(|v| v.value), Some(3000));
    assert_eq!(sc.supplemental_groups, vec![4000, 2000]);
    assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
    let caps = sc.capabilities.expect("caps");
    assert_eq!(
        (caps.add_capabilities, caps.drop_capabilities),
        (vec!["NET_ADMIN".to_string()], vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp.map(|s| s.profile_type),
        Some(api::security_profile::ProfileType::RuntimeDefault as i32)
    );
}

#[test]
fn run_as_non_root_checks_the_image_user() {
    let p = pod(serde_json::json!({"securityContext": {"runAsNonRoot": true}}));
    assert!(
        verify_run_as_non_root(&p, c(&p), Some(0), "")
            .expect_err("root image")
            .contains("image will run as root")
    );
    assert!(verify_run_as_non_root(&p, c(&p), Some(1000), "").is_ok());
    assert!(
        verify_run_as_non_root(&p, c(&p), None, "app")
            .expect_err("name")
            .contains("non-numeric user (app)")
    );
    let explicit =
        pod(serde_json::json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0}}));
    assert!(
        verify_run_as_non_root(&explicit, c(&explicit), Some(1000), "")
            .expect_err("uid 0")
            .contains("breaks non-root policy")
    );
    let free = pod(serde_json::json!({}));
    assert!(verify_run_as_non_root(&free, c(&free), Some(0), "").is_ok());
}

#[test]
fn host_namespaces_and_sysctls() {
    let p = pod(
        serde_json::json!({"hostNetwork": true, "hostPID": true, "securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}}),
    );
    let ns = sandbox_security(&p).namespace_options.expect("ns");
    assert_eq!(ns.network, api::NamespaceMode::Node as i32);
    assert_eq!(ns.pid, api::NamespaceMode::Node as i32);
    assert_eq!(ns.ipc, api::NamespaceMode::Pod as i32);
    assert_eq!(
        sysctls(&p).get("net.core.somaxconn").map(String::as_str),
        Some("1024")
    );
    let shared = pod(serde_json::json!({"shareProcessNamespace": true}));
    assert_eq!(
        sandbox_security(&shared).namespace_options.expect("ns").pid,
        api::NamespaceMode::Pod as i32
    );
}

#[test]
fn dns_policy_table() {
    let settings = DnsSettings {
        cluster_dns: vec!["10.96.0.10".into()],
        cluster_domain: "cluster.local".into(),
        host_resolv_conf: "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n".into(),
    };
    let first = dns_config(&pod(serde_json::json!({})), &settings).expect("dns");
    assert_eq!(first.servers, vec!["10.96.0.10"]);
    assert_eq!(
        first.searches,
        vec![
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ]
    );
    assert_eq!(first.options, vec!["ndots:5"]);
    let default =
        dns_config(&pod(serde_json::json!({"dnsPolicy": "Default"})), &settings).expect("dns");
    assert_eq!(
        (default.servers, default.options),
        (vec!["192.0.2.53".to_string()], vec!["edns0".to_string()])
    );
    let host_net =
        dns_config(&pod(serde_json::json!({"hostNetwork": true})), &settings).expect("dns");
    assert_eq!(
        host_net.servers,
        vec!["192.0.2.53"],
        "ClusterFirst on the host network falls back to Default"
    );
    let none = dns_config(
        &pod(serde_json::json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}]}})),
        &settings,
    )
    .expect("dns");
    assert_eq!(
        (none.servers, none.searches, none.options),
        (
            vec!["1.1.1.1".to_string()],
            vec!["a.b".to_string()],
            vec!["ndots:2".to_string()]
        )
    );
    let no_cluster_dns = DnsSettings {
        cluster_dns: vec![],
        ..settings
    };
    assert_eq!(
        dns_config(&pod(serde_json::json!({})), &no_cluster_dns)
            .expect("dns")
            .servers,
        vec!["192.0.2.53"]
    );
}

#[test]
fn hosts_file_has_the_pod_and_its_aliases() {
    let p = pod(
        serde_json::json!({"hostname": "db-0", "subdomain": "db", "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
    );
    let text = hosts_file(&p, &["10.0.0.7".into()], "cluster.local");
    assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
    assert!(
        text.contains("10.0.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
        "{text}"
    );
    assert!(
        text.contains("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
        "{text}"
    );
}

/// Without runAsUser the image's user is sent, so a runAsGroup is never sent alone (CRI requires a
/// user with it: kubelet's `determineEffectiveSecurityContext`).
#[test]
fn run_as_group_alone_comes_with_the_images_user() {
    let p = pod(serde_json::json!({
        "securityContext": {"runAsGroup": 3000},
        "containers": [{"name": "c", "image": "i"}]
    }));
    let numeric = container_security(
        &p,
        c(&p),
        None,
        ImageUser {
            uid: Some(0),
            username: "",
        },
    );
    assert_eq!(numeric.run_as_user.map(|v| v.value), Some(0));
    assert_eq!(numeric.run_as_group.map(|v| v.value), Some(3000));
    let named = container_security(
        &p,
        c(&p),
        None,
        ImageUser {
            uid: None,
            username: "app",
        },
    );
    assert_eq!(named.run_as_user, None);
    assert_eq!(named.run_as_username, "app");
    assert_eq!(named.run_as_group.map(|v| v.value), Some(3000));
    let unset = container_security(&p, c(&p), None, ImageUser::default());
    assert_eq!(unset.run_as_user.map(|v| v.value), Some(0), "no user: root");
}
