use super::*;

fn pod(container: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}, "annotations": {"team": "a"}},
        "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [container]}
    }))
    .expect("pod")
}

fn container(p: &Pod) -> &Container {
    &p.spec.as_ref().expect("spec").containers[0]
}

fn get<'a>(vars: &'a [(String, String)], k: &str) -> Option<&'a str> {
    vars.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn objects() -> EnvObjects {
    let mut o = EnvObjects::default();
    o.config_maps.insert(
        "cfg".into(),
        Some(BTreeMap::from([
            ("mode".into(), "fast".into()),
            ("level".into(), "3".into()),
        ])),
    );
    o.config_maps.insert("gone".into(), None);
    o.secrets.insert(
        "creds".into(),
        Some(BTreeMap::from([("password".into(), "hunter2".into())])),
    );
    o
}

fn facts() -> PodFacts {
    PodFacts {
        pod_ips: vec!["10.0.0.7".into()],
        host_ips: vec!["192.0.2.1".into()],
        allocatable: BTreeMap::from([(
            "memory".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("8Gi".into()),
        )]),
    }
}

#[test]
fn value_from_every_source_and_expansion() {
    let p = pod(serde_json::json!({
        "name": "c", "image": "i",
        "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
        "env": [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "CPU_MILLI", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}}},
            {"name": "MEM_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Gi"}}},
            {"name": "URL", "value": "http://$(IP):80/$(MODE)"}
        ]
    }));
    let vars = resolve(&p, container(&p), &objects(), &facts()).expect("resolved");
    for (k, v) in [
        ("MODE", "fast"),
        ("PASS", "hunter2"),
        ("POD", "web"),
        ("NS", "shop"),
        ("APP", "web"),
        ("TEAM", "a"),
        ("NODE", "n1"),
        ("IP", "10.0.0.7"),
        ("HOST", "192.0.2.1"),
        ("CPU_MILLI", "500"),
        ("CPU", "1"),
        ("MEM_MI", "64"),
        ("MEM_LIMIT", "8"),
        ("URL", "http://10.0.0.7:80/fast"),
    ] {
        assert_eq!(get(&vars, k), Some(v), "{k}");
    }
}

#[test]
fn env_from_with_prefix_and_env_overrides() {
    let p = pod(serde_json::json!({
        "name": "c", "image": "i",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [{"name": "CFG_mode", "value": "slow"}]
    }));
    let vars = resolve(&p, container(&p), &objects(), &facts()).expect("resolved");
    assert_eq!(
        get(&vars, "CFG_mode"),
        Some("slow"),
        "env wins over envFrom"
    );
    assert_eq!(get(&vars, "CFG_level"), Some("3"));
    assert_eq!(get(&vars, "password"), Some("hunter2"));
}

#[test]
fn missing_references_fail_unless_optional() {
    let cases = [
        (
            serde_json::json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}),
            Some("configmap \"gone\" not found"),
        ),
        (
            serde_json::json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope"}}}),
            Some("couldn't find key nope in ConfigMap shop/cfg"),
        ),
        (
            serde_json::json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}),
            Some("couldn't find key nope in Secret shop/creds"),
        ),
        (
            serde_json::json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}}),
            None,
        ),
        (
            serde_json::json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}}),
            None,
        ),
    ];
    for (env, expected) in cases {
        let p = pod(serde_json::json!({"name": "c", "image": "i", "env": [env.clone()]}));
        let r = resolve(&p, container(&p), &objects(), &facts());
        match expected {
            Some(msg) => assert_eq!(r.expect_err("should fail").to_string(), msg, "{env}"),
            None => assert_eq!(get(&r.expect("optional"), "X"), None, "{env}"),
        }
    }
}

#[test]
fn service_links_follow_docker_naming() {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "redis-primary"},
        "spec": {"clusterIP": "10.96.0.5", "ports": [{"name": "db", "port": 6379, "protocol": "TCP"}]}
    }))
    .expect("svc");
    let env = service_env(&[svc]);
    for (k, v) in [
        ("REDIS_PRIMARY_SERVICE_HOST", "10.96.0.5"),
        ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
        ("REDIS_PRIMARY_SERVICE_PORT_DB", "6379"),
        ("REDIS_PRIMARY_PORT", "tcp://10.96.0.5:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.96.0.5:6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
        ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
        ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.96.0.5"),
    ] {
        assert_eq!(get(&env, k), Some(v), "{k}");
    }
    let headless: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}})).expect("svc");
    assert!(service_env(&[headless]).is_empty());
}
