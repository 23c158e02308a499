//! Volume manager tests: emptyDir on disk and on tmpfs, hostPath, downwardAPI, teardown, and
//! configMap / secret / projected volumes against the in-process stand-in API server.
//!
//! They mount tmpfs and chown to arbitrary groups, so they need root; without it they return
//! early (with a note on stderr).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube_standin::{Standin, StandinHandle, StandinOptions};
use serde_json::json;

use super::*;

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (tmpfs mounts, chown)");
            return;
        }
    };
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("pod")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).expect("read")
}

fn mount_count(p: &Path) -> usize {
    let canonical = fs::canonicalize(p).expect("canonicalize");
    host::mount_points_under(&canonical)
        .expect("mountinfo")
        .iter()
        .filter(|m| **m == canonical)
        .count()
}

fn tmpfs_bytes(p: &Path) -> u64 {
    let s = nix::sys::statfs::statfs(p).expect("statfs");
    s.blocks() * u64::try_from(s.block_size()).expect("bsize")
}

#[tokio::test]
async fn empty_dir_on_disk_and_on_tmpfs_then_teardown() {
    require_root!();
    let root = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), None);
    let p = pod(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-empty"},
        "spec": {
            "securityContext": {"fsGroup": 2345},
            "containers": [{"name": "c", "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "mem", "mountPath": "/mem"},
                    {"name": "mem-default", "mountPath": "/mem2"}
                ]}],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
                {"name": "mem-default", "emptyDir": {"medium": "Memory"}}
            ]
        }
    }));
    let volumes = vm.setup(&p).await.expect("setup");
    let scratch = root
        .path()
        .join("pods/uid-empty/volumes/kubernetes.io~empty-dir/scratch");
    let mem = root
        .path()
        .join("pods/uid-empty/volumes/kubernetes.io~empty-dir/mem");
    let mem_default = root
        .path()
        .join("pods/uid-empty/volumes/kubernetes.io~empty-dir/mem-default");
    assert_eq!(volumes.get("scratch").expect("scratch").host_path, scratch);
    assert!(scratch.is_dir());
    // 0777, plus group rw/x and setgid from the fsGroup
    assert_eq!(mode(&scratch), 0o2777);
    assert_eq!(fs::metadata(&scratch).expect("meta").gid(), 2345);
    assert!(!host::is_tmpfs_mount(&scratch));
    assert!(
        root.path()
            .join("pods/uid-empty/plugins/kubernetes.io~empty-dir/scratch/ready")
            .is_file()
    );

    // the memory volume is a real tmpfs mount with the sizeLimit…
    assert!(host::is_tmpfs_mount(&mem));
    assert_eq!(tmpfs_bytes(&mem), 16 * 1024 * 1024);
    assert_eq!(fs::metadata(&mem).expect("meta").gid(), 2345);
    // …and without one, the pod's memory limit
    assert!(host::is_tmpfs_mount(&mem_default));
    assert_eq!(tmpfs_bytes(&mem_default), 64 * 1024 * 1024);

    // setup again is idempotent: no second mount, contents kept
    fs::write(mem.join("state"), "kept").expect("write");
    fs::write(scratch.join("state"), "kept").expect("write");
    vm.setup(&p).await.expect("setup again");
    assert_eq!(mount_count(&mem), 1);
    assert_eq!(read(&mem.join("state")), "kept");
    assert_eq!(read(&scratch.join("state")), "kept");

    let c = &p.spec.as_ref().expect("spec").containers[0];
    let mounts = vm.mounts_for(c, &volumes).expect("mounts");
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[1].container_path, "/mem");
    assert_eq!(mounts[1].host_path, mem.to_string_lossy());
    assert!(!mounts[1].readonly);

    // teardown unmounts and removes everything; it is idempotent
    vm.teardown("uid-empty").await.expect("teardown");
    assert!(!root.path().join("pods/uid-empty").exists());
    let canonical_root = fs::canonicalize(root.path()).expect("canonical");
    assert!(
        host::mount_points_under(&canonical_root)
            .expect("mountinfo")
            .is_empty()
    );
    vm.teardown("uid-empty").await.expect("teardown again");
    assert!(vm.teardown("").await.is_err());
    assert!(vm.teardown("..").await.is_err());
}

#[tokio::test]
async fn host_path_and_unsupported_volumes() {
    let root = tempfile::tempdir().expect("tempdir");
    let host_dir = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), None);
    let created = host_dir.path().join("made/here");
    let missing = host_dir.path().join("missing.sock");
    let p = pod(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-host"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [
            {"name": "h", "hostPath": {"path": created, "type": "DirectoryOrCreate"}},
            {"name": "any", "hostPath": {"path": "/nonexistent/anything"}}
        ]}
    }));
    let volumes = vm.setup(&p).await.expect("setup");
    assert!(created.is_dir());
    let h = volumes.get("h").expect("h");
    assert_eq!(h.host_path, created);
    assert!(!h.read_only);
    assert!(!h.selinux_relabel);
    assert!(
        !root
            .path()
            .join("pods/uid-host/volumes/kubernetes.io~host-path")
            .exists()
    );

    let p = pod(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-host2"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [
            {"name": "sock", "hostPath": {"path": missing, "type": "Socket"}},
            {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}}
        ]}
    }));
    let err = vm.setup(&p).await.expect_err("must fail");
    let messages: Vec<String> = err.failed_mounts().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        vec![
            format!(
                "MountVolume.SetUp failed for volume \"sock\" : hostPath type check failed: {} is not a socket file",
                missing.display()
            ),
            "MountVolume.SetUp failed for volume \"claim\" : volume type persistentVolumeClaim is not supported by this node agent".to_string(),
        ]
    );
    assert_eq!(err.unmounted_volumes(), vec!["sock", "claim"]);
}

#[tokio::test]
async fn downward_api_volume_on_tmpfs() {
    require_root!();
    let root = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), None);
    let mut p = pod(json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "uid-dapi",
            "labels": {"app": "web", "tier": "front"}, "annotations": {"build": "42"}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"limits": {"cpu": "500m", "memory": "32Mi"}}}],
            "volumes": [{"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}, "mode": 0o600}
            ]}}]}
    }));
    let volumes = vm.setup(&p).await.expect("setup");
    let dir = root
        .path()
        .join("pods/uid-dapi/volumes/kubernetes.io~downward-api/info");
    assert_eq!(volumes.get("info").expect("info").host_path, dir);
    assert!(volumes.get("info").expect("info").read_only);
    assert!(host::is_tmpfs_mount(&dir));
    assert_eq!(tmpfs_bytes(&dir), 32 * 1024 * 1024);
    assert_eq!(read(&dir.join("labels")), "app=\"web\"\ntier=\"front\"");
    assert_eq!(read(&dir.join("meta/name")), "web");
    assert_eq!(read(&dir.join("cpu")), "500");
    assert_eq!(mode(&dir.join("cpu")), 0o600);
    assert_eq!(mode(&dir.join("labels")), 0o644);

    // a label change reaches the file on the next sync
    p.metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "back".into());
    vm.setup(&p).await.expect("setup again");
    assert_eq!(read(&dir.join("labels")), "app=\"web\"\ntier=\"back\"");
    assert_eq!(mount_count(&dir), 1);

    vm.teardown("uid-dapi").await.expect("teardown");
    assert!(!root.path().join("pods/uid-dapi").exists());
}

async fn standin() -> (StandinHandle, kube::Client) {
    let server = Standin::start("127.0.0.1:0", StandinOptions::default())
        .await
        .expect("stand-in");
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = kube::Client::try_from(config).expect("client");
    (server, client)
}

#[tokio::test]
async fn config_map_and_secret_volumes_refresh_through_the_data_swap() {
    require_root!();
    let (_server, client) = standin().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "app-config"},
            "data": {"app.yaml": "port: 8080\n", "extra": "x"}
        }))
        .expect("cm"),
    )
    .await
    .expect("create cm");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "creds"},
                "stringData": {"password": "hunter2", "user": "admin"}
            }))
            .expect("secret"),
        )
        .await
        .expect("create secret");

    let root = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), Some(client.clone()));
    let p = pod(json!({
        "metadata": {"name": "app", "namespace": "default", "uid": "uid-cfg"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "creds", "mountPath": "/creds", "readOnly": false},
                {"name": "cfg", "mountPath": "/etc/app.yaml", "subPath": "app.yaml"}
            ]}],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app-config", "defaultMode": 0o640}},
                {"name": "creds", "secret": {"secretName": "creds", "items": [
                    {"key": "password", "path": "db/password", "mode": 0o400}
                ]}},
                {"name": "maybe", "configMap": {"name": "absent", "optional": true}},
                {"name": "maybe-secret", "secret": {"secretName": "absent", "optional": true}}
            ]}
    }));
    let volumes = vm.setup(&p).await.expect("setup");
    let cfg = root
        .path()
        .join("pods/uid-cfg/volumes/kubernetes.io~configmap/cfg");
    let creds = root
        .path()
        .join("pods/uid-cfg/volumes/kubernetes.io~secret/creds");
    assert_eq!(read(&cfg.join("app.yaml")), "port: 8080\n");
    assert_eq!(mode(&cfg.join("app.yaml")), 0o640);
    assert_eq!(read(&cfg.join("extra")), "x");
    assert_eq!(
        fs::read_link(cfg.join("app.yaml")).expect("link"),
        Path::new("..data/app.yaml")
    );
    // configMaps stay on disk, secrets on a tmpfs
    assert!(!host::is_tmpfs_mount(&cfg));
    assert!(host::is_tmpfs_mount(&creds));
    assert_eq!(read(&creds.join("db/password")), "hunter2");
    assert_eq!(mode(&creds.join("db/password")), 0o400);
    assert!(!creds.join("user").exists());
    // optional and missing: empty volumes
    let maybe = volumes.get("maybe").expect("maybe");
    assert!(atomic_writer::has_data(&maybe.host_path));
    assert_eq!(
        fs::read_dir(maybe.host_path.join("..data"))
            .expect("readdir")
            .count(),
        0
    );
    assert!(volumes.get("maybe-secret").is_some());

    // mounts: read-only forced, subPath resolved to the current file
    let c = &p.spec.as_ref().expect("spec").containers[0];
    let mounts = vm.mounts_for(c, &volumes).expect("mounts");
    assert!(mounts.iter().all(|m| m.readonly));
    assert!(
        mounts[2].host_path.contains("/..20"),
        "{}",
        mounts[2].host_path
    );
    assert!(mounts[2].host_path.ends_with("/app.yaml"));

    // update the Secret: the next setup swaps ..data and the file changes in place
    let data_before = fs::read_link(creds.join("..data")).expect("..data");
    let mut secret = secrets.get("creds").await.expect("get");
    secret.data.get_or_insert_default().insert(
        "password".into(),
        k8s_openapi::ByteString(b"correct horse".to_vec()),
    );
    secrets
        .replace("creds", &PostParams::default(), &secret)
        .await
        .expect("update");
    let volumes = vm.setup(&p).await.expect("setup again");
    assert!(volumes.refresh_errors.is_empty());
    assert_eq!(read(&creds.join("db/password")), "correct horse");
    let data_after = fs::read_link(creds.join("..data")).expect("..data");
    assert_ne!(data_before, data_after);
    assert!(!creds.join(&data_before).exists());
    assert_eq!(mount_count(&creds), 1);
    // the unchanged configMap was not rewritten
    let cfg_data = fs::read_link(cfg.join("..data")).expect("..data");
    vm.setup(&p).await.expect("setup a third time");
    assert_eq!(fs::read_link(cfg.join("..data")).expect("..data"), cfg_data);

    // a deleted Secret: the volume keeps its contents and the error is reported, not fatal
    secrets
        .delete("creds", &Default::default())
        .await
        .expect("delete");
    let volumes = vm.setup(&p).await.expect("refresh failure is not fatal");
    assert_eq!(
        volumes
            .refresh_errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["MountVolume.SetUp failed for volume \"creds\" : secret \"creds\" not found"]
    );
    assert_eq!(read(&creds.join("db/password")), "correct horse");

    // missing sources of a new pod fail with kubelet's messages
    let p2 = pod(json!({
        "metadata": {"name": "app2", "namespace": "default", "uid": "uid-cfg2"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [
            {"name": "cfg", "configMap": {"name": "nope"}},
            {"name": "key", "configMap": {"name": "app-config", "items": [{"key": "missing", "path": "m"}]}},
            {"name": "sec", "secret": {"secretName": "nope"}}
        ]}
    }));
    let err = vm.setup(&p2).await.expect_err("missing");
    let messages: Vec<String> = err.failed_mounts().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        vec![
            "MountVolume.SetUp failed for volume \"cfg\" : configmap \"nope\" not found",
            "MountVolume.SetUp failed for volume \"key\" : configmap references non-existent config key: missing",
            "MountVolume.SetUp failed for volume \"sec\" : secret \"nope\" not found",
        ]
    );
    // a failed new secret volume leaves no tmpfs behind
    let sec_dir = root
        .path()
        .join("pods/uid-cfg2/volumes/kubernetes.io~secret/sec");
    assert!(!sec_dir.exists());

    // without an API server: a clear error
    let offline = VolumeManager::new(root.path(), None);
    let p3 = pod(json!({
        "metadata": {"name": "static", "namespace": "default", "uid": "uid-static"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [
            {"name": "cfg", "configMap": {"name": "app-config"}}
        ]}
    }));
    let err = offline.setup(&p3).await.expect_err("no client");
    assert!(
        err.to_string().starts_with(
            "MountVolume.SetUp failed for volume \"cfg\" : cannot get configmap \"app-config\": the node agent has no API server connection"
        ),
        "{err}"
    );

    for uid in ["uid-cfg", "uid-cfg2", "uid-static"] {
        vm.teardown(uid).await.expect("teardown");
    }
    assert!(vm.orphaned_pod_dirs([]).is_empty());
}

/// The claims of a JWT issued by the stand-in.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("jwt payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims")
}

#[tokio::test]
async fn projected_service_account_token_volume() {
    require_root!();
    let (_server, client) = standin().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "builder"}})).expect("sa"),
    )
    .await
    .expect("create sa");
    // The stand-in's ServiceAccount admission adds the kube-api-access-* projected volume.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(
            &PostParams::default(),
            &pod(json!({
                "metadata": {"name": "builder-0"},
                "spec": {
                    "serviceAccountName": "builder",
                    "securityContext": {"fsGroup": 3000},
                    "containers": [{"name": "c", "image": "busybox"}],
                    "volumes": [{"name": "vault", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 7200, "path": "vault-token"}},
                        {"downwardAPI": {"items": [{"path": "pod", "fieldRef": {"fieldPath": "metadata.name"}}]}}
                    ]}}]
                }
            })),
        )
        .await
        .expect("create pod");
    let uid = created.metadata.uid.clone().expect("uid");
    let api_access = created
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name.starts_with("kube-api-access-")))
        .map(|v| v.name.clone())
        .expect("kube-api-access volume");

    let root = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), Some(client.clone()));
    let volumes = vm.setup(&created).await.expect("setup");

    // the admission volume: token, ca.crt, namespace (defaultMode 0644 made 0640 / group by fsGroup)
    let access = volumes.get(&api_access).expect("access").host_path.clone();
    assert!(access.ends_with(format!("kubernetes.io~projected/{api_access}")));
    assert!(host::is_tmpfs_mount(&access));
    let token = read(&access.join("token"));
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:builder");
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], uid.as_str());
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "builder-0");
    assert!(read(&access.join("ca.crt")).contains("BEGIN CERTIFICATE"));
    assert_eq!(read(&access.join("namespace")), "default");
    assert_eq!(mode(&access.join("token")), 0o640);
    assert_eq!(mode(&access.join("namespace")), 0o644);
    assert_eq!(
        fs::metadata(access.join("token")).expect("meta").gid(),
        3000
    );
    assert_eq!(mode(&access) & 0o2000, 0o2000);

    // the explicit one: audience and lifetime
    let vault = volumes.get("vault").expect("vault").host_path.clone();
    let vault_token = read(&vault.join("vault-token"));
    let vc = claims(&vault_token);
    assert_eq!(vc["aud"], json!(["vault"]));
    let lifetime = vc["exp"].as_i64().expect("exp") - vc["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 7200);
    assert_eq!(read(&vault.join("pod")), "builder-0");
    assert_ne!(token, vault_token);

    // the next sync reuses the cached tokens: nothing is rewritten
    let data = fs::read_link(vault.join("..data")).expect("..data");
    vm.setup(&created).await.expect("setup again");
    assert_eq!(read(&vault.join("vault-token")), vault_token);
    assert_eq!(fs::read_link(vault.join("..data")).expect("..data"), data);
    assert_eq!(vm.inner.tokens.len(), 2);

    // past 80 % of the lifetime the token is requested again and swapped in
    vm.inner.tokens.age(6000);
    vm.setup(&created)
        .await
        .expect("setup after rotation is due");
    let rotated = read(&vault.join("vault-token"));
    assert_ne!(rotated, vault_token);
    assert_eq!(claims(&rotated)["aud"], json!(["vault"]));
    assert_ne!(fs::read_link(vault.join("..data")).expect("..data"), data);

    // a static pod without an API server cannot get a token
    let offline = VolumeManager::new(root.path(), None);
    let mut static_pod = created.clone();
    static_pod.metadata.uid = Some("uid-static-token".into());
    let err = offline.setup(&static_pod).await.expect_err("no client");
    assert!(
        err.failed_mounts().iter().all(|e| e
            .to_string()
            .contains("failed to fetch token: cannot get serviceaccount token for \"builder\"")),
        "{err}"
    );

    vm.teardown(&uid).await.expect("teardown");
    vm.teardown("uid-static-token").await.expect("teardown");
    assert_eq!(vm.inner.tokens.len(), 0);
    assert!(!root.path().join("pods").join(&uid).exists());
}

#[tokio::test]
async fn orphaned_pod_dirs_are_listed() {
    let root = tempfile::tempdir().expect("tempdir");
    let vm = VolumeManager::new(root.path(), None);
    assert!(vm.orphaned_pod_dirs(["a"]).is_empty());
    for uid in ["a", "b", "c"] {
        fs::create_dir_all(root.path().join("pods").join(uid).join("volumes")).expect("mkdir");
    }
    fs::write(root.path().join("pods/not-a-dir"), "").expect("write");
    assert_eq!(vm.orphaned_pod_dirs(["b"]), vec!["a", "c"]);
    vm.teardown("a").await.expect("teardown");
    assert_eq!(vm.orphaned_pod_dirs(["b"]), vec!["c"]);
}

#[test]
fn memory_volume_size_follows_kubelet() {
    let mut alloc = Allocatable::new();
    alloc.insert("memory".into(), "1Gi".parse().expect("q"));
    let limited = pod(json!({"spec": {"containers": [
        {"name": "a", "resources": {"limits": {"memory": "100Mi"}}},
        {"name": "b", "resources": {"limits": {"memory": "50Mi"}}}
    ], "initContainers": [
        {"name": "i", "resources": {"limits": {"memory": "200Mi"}}}
    ]}}));
    let unlimited = pod(json!({"spec": {"containers": [
        {"name": "a", "resources": {"limits": {"memory": "100Mi"}}},
        {"name": "b"}
    ]}}));
    let mi = |n: u64| Some(n * 1024 * 1024);
    assert_eq!(memory_volume_size(&limited, None, &alloc), mi(200));
    let small = ApiQuantity("10Mi".into());
    let huge = ApiQuantity("10Gi".into());
    assert_eq!(memory_volume_size(&limited, Some(&small), &alloc), mi(10));
    assert_eq!(memory_volume_size(&limited, Some(&huge), &alloc), mi(200));
    assert_eq!(memory_volume_size(&unlimited, None, &alloc), mi(1024));
    assert_eq!(
        memory_volume_size(&unlimited, None, &Allocatable::new()),
        None
    );
    assert_eq!(
        memory_volume_size(&unlimited, Some(&small), &Allocatable::new()),
        mi(10)
    );
}
