//! The pod and QoS cgroups on recorded trees: a cgroup v1 hybrid layout (as these machines: `cpu`
//! and `cpuacct` one hierarchy, `unified/` beside) and a v2 unified one, in temporary directories.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;

use super::*;

fn pod(uid: &str, spec: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": uid},
        "spec": spec,
    }))
    .expect("pod")
}

fn one_container(resources: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"containers": [{"name": "c", "image": "i", "resources": resources}]})
}

/// A v1 hybrid tree: `cpu,cpuacct` with `cpu` and `cpuacct` links, `memory`, `pids`, `unified`.
fn v1_tree(root: &Path) {
    for dir in ["cpu,cpuacct", "memory", "pids", "unified"] {
        std::fs::create_dir_all(root.join(dir)).expect("mkdir");
    }
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).expect("link");
    std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).expect("link");
    std::fs::write(root.join("unified/cgroup.controllers"), "").expect("write");
}

fn v2_tree(root: &Path) {
    std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").expect("write");
    std::fs::write(root.join("cgroup.subtree_control"), "").expect("write");
}

fn cgroups(mount: &Path, driver: CgroupDriver) -> PodCgroups {
    PodCgroups::new(&CgroupSettings {
        driver,
        cgroup_root: "/".into(),
        cgroups_per_qos: true,
        mount: mount.to_path_buf(),
    })
}

/// On cgroupfs, a cgroup's control files vanish with `rmdir`; in a recorded tree they are files,
/// so a test removes them first, as the kernel would.
fn drop_control_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            drop_control_files(&path);
        } else {
            std::fs::remove_file(&path).expect("remove control file");
        }
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .trim()
        .to_string()
}

/// What a pod asks and the cgroup values it should get: cpu shares, CFS quota, memory limit.
type Case = (
    &'static str,
    serde_json::Value,
    Option<u64>,
    Option<i64>,
    Option<i64>,
);

#[test]
fn pod_resource_config_follows_kubelet() {
    // (what, pod spec, shares, quota, memory)
    let cases: Vec<Case> = vec![
        (
            "best effort",
            one_container(serde_json::json!({})),
            Some(2),
            None,
            None,
        ),
        (
            "guaranteed",
            one_container(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
            Some(512),
            Some(50_000),
            Some(64 << 20),
        ),
        (
            "burstable, requests only",
            one_container(serde_json::json!({"requests": {"cpu": "250m", "memory": "32Mi"}})),
            Some(256),
            None,
            None,
        ),
        (
            "burstable, limits below requests' max",
            one_container(
                serde_json::json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "128Mi"}}),
            ),
            Some(102),
            Some(100_000),
            Some(128 << 20),
        ),
        (
            "burstable, one container without a memory limit: no pod memory limit",
            serde_json::json!({"containers": [
                {"name": "a", "image": "i", "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": "100m"}}},
            ]}),
            Some(102),
            None,
            None,
        ),
        (
            "two containers' limits add up; an init container's larger limit wins",
            serde_json::json!({
            "initContainers": [{"name": "init", "image": "i",
                "resources": {"limits": {"cpu": "2", "memory": "300Mi"}}}],
            "containers": [
                {"name": "a", "image": "i", "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}},
                {"name": "b", "image": "i", "resources": {"limits": {"cpu": "300m", "memory": "64Mi"}}},
            ]}),
            Some(2048),
            Some(200_000),
            Some(300 << 20),
        ),
        (
            "pod-level resources win over the containers'",
            serde_json::json!({
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "48Mi"}},
                "containers": [{"name": "a", "image": "i",
                    "resources": {"requests": {"memory": "16Mi"}}}]}),
            Some(102),
            None,
            Some(48 << 20),
        ),
    ];
    for (what, spec, shares, quota, memory) in cases {
        let config = resource_config::for_pod(&pod("u", spec));
        assert_eq!(config.cpu_shares, shares, "{what}: shares");
        assert_eq!(config.cpu_quota, quota, "{what}: quota");
        assert_eq!(config.memory, memory, "{what}: memory");
    }
}

#[test]
fn v1_pod_cgroups_hold_the_pod_limits_and_go_with_the_pod() {
    let tmp = tempfile::tempdir().expect("tmp");
    v1_tree(tmp.path());
    let cg = cgroups(tmp.path(), CgroupDriver::Cgroupfs);
    assert_eq!(cg.version(), CgroupVersion::V1);
    cg.setup_qos(Some(node_allocatable(
        2,
        Some(4 << 30),
        &Default::default(),
        &Default::default(),
    )))
    .expect("qos");
    let cpu = tmp.path().join("cpu,cpuacct");
    let memory = tmp.path().join("memory");
    assert_eq!(read(cpu.join("kubepods/cpu.shares")), "2048");
    assert_eq!(
        read(memory.join("kubepods/memory.limit_in_bytes")),
        (4u64 << 30).to_string()
    );
    assert_eq!(read(cpu.join("kubepods/besteffort/cpu.shares")), "2");
    assert_eq!(read(cpu.join("kubepods/burstable/cpu.shares")), "2");

    let guaranteed = pod(
        "g-1",
        one_container(serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"}})),
    );
    assert_eq!(cg.cgroup_parent(&guaranteed), "/kubepods/podg-1");
    cg.ensure_pod(&guaranteed).expect("ensure");
    assert_eq!(read(cpu.join("kubepods/podg-1/cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(cpu.join("kubepods/podg-1/cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(read(cpu.join("kubepods/podg-1/cpu.shares")), "512");
    assert_eq!(
        read(memory.join("kubepods/podg-1/memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert!(tmp.path().join("pids/kubepods/podg-1").is_dir());

    let burstable = pod(
        "b-1",
        one_container(serde_json::json!({"requests": {"cpu": "1"}})),
    );
    cg.ensure_pod(&burstable).expect("ensure");
    assert_eq!(
        read(cpu.join("kubepods/burstable/cpu.shares")),
        "1024",
        "burstable = its pods' requests"
    );
    assert_eq!(
        read(cpu.join("kubepods/burstable/podb-1/cpu.cfs_quota_us")),
        "-1"
    );
    assert_eq!(
        read(memory.join("kubepods/burstable/podb-1/memory.limit_in_bytes")),
        "-1"
    );

    // A container cgroup the runtime left behind goes too, in the hierarchies the agent does
    // not write (runc makes the pod's path in every one: freezer, unified…).
    std::fs::create_dir_all(memory.join("kubepods/burstable/podb-1/ctr")).expect("mkdir");
    let freezer = tmp.path().join("freezer");
    let unified = tmp.path().join("unified");
    for root in [&freezer, &unified] {
        std::fs::create_dir_all(root.join("kubepods/burstable/podb-1/ctr")).expect("mkdir");
    }
    for root in [&cpu, &memory, &tmp.path().join("pids")] {
        drop_control_files(&root.join("kubepods/burstable/podb-1"));
        drop_control_files(&root.join("kubepods/podg-1"));
    }
    assert!(cg.destroy_pod("b-1").expect("destroy"), "it was there");
    assert!(!memory.join("kubepods/burstable/podb-1").exists());
    assert!(!cpu.join("kubepods/burstable/podb-1").exists());
    assert!(!freezer.join("kubepods/burstable/podb-1").exists());
    assert!(!unified.join("kubepods/burstable/podb-1").exists());
    assert!(freezer.join("kubepods/burstable").is_dir());
    assert_eq!(read(cpu.join("kubepods/burstable/cpu.shares")), "2");
    assert!(cg.destroy_pod("g-1").expect("destroy"));
    assert!(!memory.join("kubepods/podg-1").exists());
    assert!(memory.join("kubepods").is_dir(), "the QoS cgroups stay");
    assert!(!cg.destroy_pod("g-1").expect("destroy"), "gone already");
}

#[test]
fn resizing_raises_the_pod_limits_first_then_sets_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    v1_tree(tmp.path());
    let cg = cgroups(tmp.path(), CgroupDriver::Cgroupfs);
    cg.setup_qos(None).expect("qos");
    let small = pod(
        "r",
        one_container(serde_json::json!({"limits": {"cpu": "1", "memory": "64Mi"}})),
    );
    cg.ensure_pod(&small).expect("ensure");
    // Same QoS class, cpu down, memory up: raised, memory grows, cpu stays until the update.
    let resized = pod(
        "r",
        one_container(serde_json::json!({"limits": {"cpu": "500m", "memory": "128Mi"}})),
    );
    cg.raise_pod(&resized).expect("raise");
    let dir = tmp.path().join("cpu,cpuacct/kubepods/podr");
    assert_eq!(read(dir.join("cpu.cfs_quota_us")), "100000");
    assert_eq!(
        read(
            tmp.path()
                .join("memory/kubepods/podr/memory.limit_in_bytes")
        ),
        (128u64 << 20).to_string()
    );
    cg.update_pod(&resized).expect("update");
    assert_eq!(read(dir.join("cpu.cfs_quota_us")), "50000");
}

#[test]
fn v2_pod_cgroups_use_weights_and_enable_controllers() {
    let tmp = tempfile::tempdir().expect("tmp");
    v2_tree(tmp.path());
    let cg = cgroups(tmp.path(), CgroupDriver::Cgroupfs);
    assert_eq!(cg.version(), CgroupVersion::V2);
    // Recorded trees have no kernel to create a child's control files: an empty subtree_control
    // in each directory made is what the kernel would show.
    cg.setup_qos(Some(node_allocatable(
        2,
        Some(1 << 30),
        &Default::default(),
        &Default::default(),
    )))
    .expect("qos");
    let root = tmp.path();
    assert_eq!(
        read(root.join("cgroup.subtree_control")),
        "+pids",
        "the last controller written"
    );
    assert_eq!(read(root.join("kubepods/cpu.weight")), "79");
    assert_eq!(
        read(root.join("kubepods/memory.max")),
        (1u64 << 30).to_string()
    );
    assert_eq!(read(root.join("kubepods/cpu.max")), "max 100000");
    let g = pod(
        "g2",
        one_container(serde_json::json!({"limits": {"cpu": "250m", "memory": "32Mi"}})),
    );
    cg.ensure_pod(&g).expect("ensure");
    assert_eq!(read(root.join("kubepods/podg2/cpu.max")), "25000 100000");
    assert_eq!(
        read(root.join("kubepods/podg2/memory.max")),
        (32u64 << 20).to_string()
    );
    assert_eq!(read(root.join("kubepods/podg2/cpu.weight")), "10");
    let be = pod("be", one_container(serde_json::json!({})));
    cg.ensure_pod(&be).expect("ensure");
    assert_eq!(
        read(root.join("kubepods/besteffort/podbe/memory.max")),
        "max"
    );
    assert_eq!(read(root.join("kubepods/besteffort/podbe/cpu.weight")), "1");
    drop_control_files(&root.join("kubepods/besteffort/podbe"));
    cg.destroy_pod("be").expect("destroy");
    assert!(!root.join("kubepods/besteffort/podbe").exists());
}

#[test]
fn systemd_driver_makes_slices_and_names_them_to_the_runtime() {
    let tmp = tempfile::tempdir().expect("tmp");
    v2_tree(tmp.path());
    let cg = cgroups(tmp.path(), CgroupDriver::Systemd);
    cg.setup_qos(None).expect("qos");
    assert!(
        tmp.path()
            .join("kubepods.slice/kubepods-burstable.slice")
            .is_dir()
    );
    assert!(
        tmp.path()
            .join("kubepods.slice/kubepods-besteffort.slice")
            .is_dir()
    );
    let b = pod(
        "1a-2b",
        one_container(serde_json::json!({"requests": {"memory": "1Mi"}})),
    );
    assert_eq!(cg.cgroup_parent(&b), "kubepods-burstable-pod1a_2b.slice");
    cg.ensure_pod(&b).expect("ensure");
    let dir = tmp
        .path()
        .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a_2b.slice");
    assert_eq!(read(dir.join("memory.max")), "max");
    drop_control_files(&dir);
    cg.destroy_pod("1a-2b").expect("destroy");
    assert!(!dir.exists());
}

#[test]
fn without_cgroups_per_qos_pods_go_under_the_root_and_nothing_is_made() {
    let tmp = tempfile::tempdir().expect("tmp");
    v1_tree(tmp.path());
    let cg = PodCgroups::new(&CgroupSettings {
        driver: CgroupDriver::Cgroupfs,
        cgroup_root: "/custom".into(),
        cgroups_per_qos: false,
        mount: tmp.path().to_path_buf(),
    });
    cg.setup_qos(None).expect("qos");
    let p = pod("x", one_container(serde_json::json!({})));
    cg.ensure_pod(&p).expect("ensure");
    assert_eq!(cg.cgroup_parent(&p), "/custom");
    assert!(!tmp.path().join("memory/custom").exists());
    assert!(!tmp.path().join("memory/kubepods").exists());
}

#[test]
fn a_write_the_kernel_refuses_names_the_file_and_value() {
    let tmp = tempfile::tempdir().expect("tmp");
    v1_tree(tmp.path());
    // A directory where the control file should be: the write fails as a refused one would.
    std::fs::create_dir_all(tmp.path().join("memory/kubepods/memory.limit_in_bytes"))
        .expect("mkdir");
    let cg = cgroups(tmp.path(), CgroupDriver::Cgroupfs);
    let err = cg
        .setup_qos(Some(node_allocatable(
            1,
            Some(1 << 30),
            &Default::default(),
            &Default::default(),
        )))
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("memory.limit_in_bytes") && text.contains("1073741824"),
        "{text}"
    );
}

#[test]
fn allocatable_subtracts_the_reservations() {
    let reserved: crate::node::resources::ResourceList = [
        ("cpu".to_string(), "500m".parse().expect("q")),
        ("memory".to_string(), "1Gi".parse().expect("q")),
    ]
    .into_iter()
    .collect();
    let config = node_allocatable(4, Some(8 << 30), &reserved, &Default::default());
    assert_eq!(config.cpu_shares, Some(3584));
    assert_eq!(config.memory, Some(7 << 30));
}

proptest! {
    /// Whatever the containers ask, a pod's cgroup never limits below what a container may use:
    /// its memory limit, when set, is at least each container's, and its quota at least each
    /// container's cpu limit.
    #[test]
    fn pod_limits_cover_each_container(limits in proptest::collection::vec((1u32..4000, 1u32..2048), 1..4)) {
        let containers: Vec<serde_json::Value> = limits.iter().enumerate().map(|(i, (cpu, mem))| {
            serde_json::json!({"name": format!("c{i}"), "image": "i",
                "resources": {"limits": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}}})
        }).collect();
        let config = resource_config::for_pod(&pod("p", serde_json::json!({"containers": containers})));
        for (cpu, mem) in &limits {
            let quota = config.cpu_quota.expect("all containers declare cpu limits");
            prop_assert!(quota >= i64::from(*cpu) * 100);
            let memory = config.memory.expect("all containers declare memory limits");
            prop_assert!(memory >= i64::from(*mem) << 20);
        }
        prop_assert!(config.cpu_weight().is_some_and(|w| (1..=10_000).contains(&w)));
    }
}
