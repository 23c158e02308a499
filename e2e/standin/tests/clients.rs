//! Real clients against the stand-in: kube-rs (typed API and the runtime watcher, including
//! its relist after `410 Gone`) and, when installed, the real `kubectl`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api as KubeApi, Client, ResourceExt};
use kube_standin::{Standin, StandinHandle, StandinOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

async fn client(server: &StandinHandle) -> Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    Client::try_from(config).unwrap()
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn kube_typed_api() {
    let server = Standin::start("127.0.0.1:0", StandinOptions::default())
        .await
        .unwrap();
    let client = client(&server).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("p", "n1"))
        .await
        .unwrap();
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    let listed = pods.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
    // Status patch as the kubelet sends it.
    let patch = json!({"metadata": {"uid": created.uid()}, "status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    let patched = pods
        .patch_status("p", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    // A stale replace is a 409.
    let mut stale = created.clone();
    stale.labels_mut().insert("x".into(), "y".into());
    match pods.replace("p", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Graceful delete of a bound pod answers the pod; a configmap delete answers a Status.
    let del = pods.delete("p", &DeleteParams::default()).await.unwrap();
    let left = del.left().expect("the pod");
    assert!(left.metadata.deletion_timestamp.is_some());
    let cms: KubeApi<ConfigMap> = KubeApi::namespaced(client, "default");
    let del = cms
        .delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .unwrap();
    assert!(del.is_right());
    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    Gone,
}

async fn next_seen<S>(stream: &mut S) -> Seen
where
    S: futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
{
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watcher event within 10s")
        .expect("the stream goes on");
    match item {
        Ok(watcher::Event::Init) => Seen::Init,
        Ok(watcher::Event::InitApply(p)) => Seen::InitApply(p.name_any()),
        Ok(watcher::Event::InitDone) => Seen::InitDone,
        Ok(watcher::Event::Apply(p)) => Seen::Apply(p.name_any()),
        Ok(watcher::Event::Delete(p)) => Seen::Delete(p.name_any()),
        Err(watcher::Error::WatchError(e)) if e.code == 410 => Seen::Gone,
        Err(e) => panic!("unexpected watcher error: {e}"),
    }
}

#[tokio::test]
async fn kube_watcher_relists_after_410() {
    let server = Standin::start(
        "127.0.0.1:0",
        StandinOptions {
            bookmark_interval: Duration::from_secs(600),
            ..StandinOptions::default()
        },
    )
    .await
    .unwrap();
    let client = client(&server).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a", "n1"))
        .await
        .unwrap();
    // Each watch request lasts one second, then the watcher resumes from its last version.
    let mut stream = watcher(pods.clone(), watcher::Config::default().timeout(1)).boxed();
    assert_eq!(next_seen(&mut stream).await, Seen::Init);
    assert_eq!(next_seen(&mut stream).await, Seen::InitApply("a".into()));
    assert_eq!(next_seen(&mut stream).await, Seen::InitDone);
    // Move the global version on elsewhere and compact: the resumed watch is too old.
    let cms: KubeApi<ConfigMap> = KubeApi::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "tick"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    server.compact();
    assert_eq!(next_seen(&mut stream).await, Seen::Gone);
    assert_eq!(next_seen(&mut stream).await, Seen::Init);
    assert_eq!(next_seen(&mut stream).await, Seen::InitApply("a".into()));
    assert_eq!(next_seen(&mut stream).await, Seen::InitDone);
    pods.create(&PostParams::default(), &pod("b", ""))
        .await
        .unwrap();
    assert_eq!(next_seen(&mut stream).await, Seen::Apply("b".into()));
}

#[tokio::test]
async fn kube_watcher_streaming_list() {
    let server = Standin::start("127.0.0.1:0", common::quick_bookmarks())
        .await
        .unwrap();
    let client = client(&server).await;
    let pods: KubeApi<Pod> = KubeApi::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("a", "n1"))
        .await
        .unwrap();
    let cfg = watcher::Config::default()
        .streaming_lists()
        .fields("spec.nodeName=n1");
    let mut stream = watcher(pods.clone(), cfg).boxed();
    assert_eq!(next_seen(&mut stream).await, Seen::Init);
    assert_eq!(next_seen(&mut stream).await, Seen::InitApply("a".into()));
    assert_eq!(next_seen(&mut stream).await, Seen::InitDone);
    pods.create(&PostParams::default(), &pod("b", "n1"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("c", "n2"))
        .await
        .unwrap();
    assert_eq!(next_seen(&mut stream).await, Seen::Apply("b".into()));
    pods.delete("b", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(
        next_seen(&mut stream).await,
        Seen::Apply("b".into()),
        "deletionTimestamp set"
    );
    assert_eq!(next_seen(&mut stream).await, Seen::Delete("b".into()));
    // The reflector-style consumer also works on top.
    let names: Vec<String> = watcher(pods, watcher::Config::default())
        .try_filter_map(|e| async move {
            Ok(match e {
                watcher::Event::InitApply(p) => Some(p.name_any()),
                _ => None,
            })
        })
        .take(2)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names, ["a", "c"]);
}

// ------------------------------------------------------------------ kubectl

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    kubeconfig: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("kubectl finished within 60s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {stdout}\n{stderr}"
        );
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl() {
    if !Path::new(KUBECTL).exists() {
        println!("skipping real_kubectl: {KUBECTL} is not installed");
        return;
    }
    let server = Standin::start("127.0.0.1:0", StandinOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let k = Kubectl {
        kubeconfig,
        cache: dir.path().join("cache"),
    };
    let api = common::Api {
        base: server.url(),
        server,
        http: reqwest::Client::new(),
    };

    let v: serde_json::Value =
        serde_json::from_str(&k.run(&["version", "-o", "json"]).await).unwrap();
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        kube_standin::discovery::GIT_VERSION
    );
    let ns = k.run(&["get", "ns"]).await;
    assert!(
        ns.contains("kube-node-lease") && ns.contains("Active"),
        "{ns}"
    );

    assert!(
        k.run(&["create", "configmap", "x", "--from-literal=a=b"])
            .await
            .contains("configmap/x created")
    );
    assert_eq!(
        api.get("/api/v1/namespaces/default/configmaps/x")
            .await
            .body["data"]["a"],
        "b"
    );
    assert!(
        k.run(&["create", "secret", "generic", "s", "--from-literal=a=b"])
            .await
            .contains("secret/s created")
    );
    assert_eq!(
        api.get("/api/v1/namespaces/default/secrets/s").await.body["data"]["a"],
        "Yg=="
    );

    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p1\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: busybox:1.36\n",
    )
    .unwrap();
    let m = manifest.to_str().unwrap();
    assert!(k.run(&["create", "-f", m]).await.contains("pod/p1 created"));
    let pods = k.run(&["get", "pods", "-A"]).await;
    assert!(
        pods.contains("p1") && pods.contains("Pending") && pods.contains("NAMESPACE"),
        "{pods}"
    );

    api.post("/api/v1/nodes", json!({"metadata": {"name": "node-1"}, "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.32.0"}}})).await;
    let nodes = k.run(&["get", "nodes"]).await;
    assert!(
        nodes.contains("node-1") && nodes.contains("Ready"),
        "{nodes}"
    );
    api.post(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        json!({"metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1"}}),
    )
    .await;
    let leases = k.run(&["get", "lease", "-n", "kube-node-lease"]).await;
    assert!(leases.contains("node-1"), "{leases}");

    assert!(
        k.run(&[
            "patch",
            "pod",
            "p1",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}}}"#
        ])
        .await
        .contains("patched")
    );
    assert!(
        k.run(&[
            "patch",
            "pod",
            "p1",
            "--type=merge",
            "--subresource=status",
            "-p",
            r#"{"status":{"phase":"Running"}}"#
        ])
        .await
        .contains("patched")
    );
    assert!(
        k.run(&[
            "patch",
            "cm",
            "x",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/c","value":"d"}]"#
        ])
        .await
        .contains("patched")
    );
    let got = api.get("/api/v1/namespaces/default/pods/p1").await.body;
    assert_eq!(got["metadata"]["labels"]["x"], "y");
    assert_eq!(got["status"]["phase"], "Running");

    // kubectl get pods -w sees a new pod.
    let mut watch = k.command(&["get", "pods", "-w"]);
    watch.stdout(std::process::Stdio::piped());
    let mut child = watch.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("NAME"), "{first}");
    api.pod("default", "p2", "").await;
    let saw = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("p2") {
                return line;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(saw.contains("Pending"), "{saw}");
    child.kill().await.unwrap();

    assert!(
        k.run(&["delete", "pod", "p2"])
            .await
            .contains("pod \"p2\" deleted")
    );
    assert_eq!(
        api.get("/api/v1/namespaces/default/pods/p2").await.code,
        404
    );
    assert!(
        k.run(&["delete", "pod", "p1", "--wait=false"])
            .await
            .contains("deleted")
    );
    let got = api.get("/api/v1/namespaces/default/pods/p1").await.body;
    assert_eq!(
        got["metadata"]["deletionGracePeriodSeconds"], 30,
        "bound pods go gracefully"
    );
    let token = k.run(&["create", "token", "default"]).await;
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    let yaml = k.run(&["get", "cm", "x", "-o", "yaml"]).await;
    assert!(yaml.contains("c: d"), "{yaml}");
}

#[tokio::test]
async fn binary_prints_its_address_and_writes_a_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kube-standin"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
        .arg(&kc)
        .args(["--bookmark-interval", "1s", "--history-size", "100"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line.strip_prefix("listening on ").unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{line}"
    );
    let config = std::fs::read_to_string(&kc).unwrap();
    assert!(config.contains(&format!("server: {url}")), "{config}");
    let http = reqwest::Client::new();
    let v = http.get(format!("{url}/version")).send().await.unwrap();
    assert_eq!(v.status().as_u16(), 200);
    let c = http
        .post(format!("{url}/standin/compact"))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status().as_u16(), 200);
    // SIGTERM stops it cleanly.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
