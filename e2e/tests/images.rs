//! Real image pulls, through the real agent and runtime, from the private registry that
//! `e2e/scripts/registry-up.sh` starts (`MK_E2E_REGISTRY=127.0.0.1:PORT`): a registry that wants HTTP
//! basic auth (user `e2e`, password `e2e-secret`) for every request and holds `e2e/busybox:1.36` and
//! `e2e/busybox:latest`. Covers imagePullSecrets, the pull policies (and the API server's default of
//! Always for `:latest`), and the waiting reasons of failed pulls (`ErrImagePull`, `ImagePullBackOff`,
//! `ErrImageNeverPull`). Run through `e2e/run-tests.sh`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use mk_cri::api;
use mk_e2e::cluster::Cluster;
use mk_e2e::{Agent, periods};

const REGISTRY_VAR: &str = "MK_E2E_REGISTRY";
const USER: &str = "e2e";
const PASSWORD: &str = "e2e-secret";
/// base64("e2e:e2e-secret"), the `auth` field `kubectl create secret docker-registry` writes.
const AUTH: &str = "ZTJlOmUyZS1zZWNyZXQ=";

/// The registry's `host:port`. Panics with instructions when it is not set: these tests never skip.
fn registry() -> String {
    match std::env::var(REGISTRY_VAR) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{REGISTRY_VAR} is not set: the image tests need the private registry with basic auth that \
             e2e/scripts/registry-up.sh starts. Run them through e2e/run-tests.sh, or by hand: \
             `export {REGISTRY_VAR}=$(e2e/scripts/registry-up.sh /tmp/mk-reg target/e2e-images | tail -n 1)` \
             (stop it with e2e/scripts/registry-down.sh /tmp/mk-reg)."
        ),
    }
}

fn image(tag: &str) -> String {
    format!("{}/e2e/busybox:{tag}", registry())
}

/// The grace period of the [`sleeper`] pods.
const GRACE: Duration = Duration::from_secs(2);

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("pod")
}

/// A pod whose one container `main` runs `image` until it is told to stop.
fn sleeper(name: &str, image: &str, policy: Option<&str>, pull_secret: Option<&str>) -> Pod {
    let mut container = serde_json::json!({
        "name": "main", "image": image,
        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    });
    if let Some(policy) = policy {
        container["imagePullPolicy"] = policy.into();
    }
    let mut spec = serde_json::json!({"terminationGracePeriodSeconds": GRACE.as_secs(), "containers": [container]});
    if let Some(secret) = pull_secret {
        spec["imagePullSecrets"] = serde_json::json!([{"name": secret}]);
    }
    pod(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
}

async fn joined(prefix: &str) -> anyhow::Result<(Cluster, Agent)> {
    // Fail before starting anything when the registry is not configured.
    registry();
    let cluster = Cluster::start().await?;
    let agent = Agent::join(prefix, &cluster, "")?;
    Ok((cluster, agent))
}

/// Creates a `kubernetes.io/dockerconfigjson` Secret with the registry's credentials, as
/// `kubectl create secret docker-registry NAME --docker-server=REG --docker-username=e2e
/// --docker-password=e2e-secret` does.
async fn create_pull_secret(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    let config = serde_json::json!({"auths": {registry(): {
        "username": USER, "password": PASSWORD, "auth": AUTH
    }}});
    let secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(serde_json::to_vec(&config)?),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(cluster.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

fn status_of(p: &Pod, name: &str) -> Option<ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .cloned()
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

/// The waiting reason and message of container `main`.
fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = status_of(p, "main")?.state?.waiting?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

fn running(p: &Pod) -> bool {
    phase(p) == Some("Running")
        && status_of(p, "main")
            .and_then(|s| s.state)
            .is_some_and(|s| s.running.is_some())
}

/// Waits until container `main` of the pod runs; on failure adds the agent's log lines about the pod.
async fn wait_running(cluster: &Cluster, agent: &Agent, name: &str) -> anyhow::Result<Pod> {
    cluster
        .wait_pod("default", name, periods().api_pod_start_pulling(), |p| {
            running(p).then(|| p.clone())
        })
        .await
        .map_err(|e| e.context(agent_log_about(agent, name)))
}

/// The agent's log lines that mention the pod.
fn agent_log_about(agent: &Agent, name: &str) -> String {
    let lines: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| l.contains(name))
        .map(str::to_string)
        .collect();
    format!("agent log about {name}:\n{}", lines.join("\n"))
}

/// Pulls `image` with the registry's credentials straight through CRI (on Docker through the adapter
/// the agent serves, which appears shortly after the agent starts).
async fn pre_pull(agent: &Agent, image: &str) -> anyhow::Result<()> {
    let deadline =
        Instant::now() + periods().agent_up() + mk_e2e::periods::allow(mk_e2e::periods::work::PULL);
    loop {
        let result = agent
            .cri()
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                // As kubelet sends them: no server address (containerd 1.6 parses it as a URL).
                auth: Some(api::AuthConfig {
                    username: USER.into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                }),
                sandbox_config: None,
            })
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("pre-pulling {image}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("pre-pulling {image}: {e}")),
        }
    }
}

/// The pod's events as `(reason, message)`, oldest first.
async fn events(cluster: &Cluster, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let api: Api<Event> = Api::namespaced(cluster.client.clone(), "default");
    let list = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Polls the pod's events until one matches; fails with all of them after `timeout`.
async fn wait_event(
    cluster: &Cluster,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = events(cluster, name).await?;
        if let Some(found) = all.iter().find(|(r, m)| check(r, m)) {
            return Ok(found.clone());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "no event {what} for pod {name} within {timeout:?}; its events: {all:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until container `main` of the pod has been seen waiting with `ErrImagePull` and then with
/// `ImagePullBackOff` (kubelet shows the first after a failed pull and the second while the pull
/// is backed off); checks their messages and that the pod stays Pending meanwhile. Returns the last pod.
async fn wait_pull_failure_then_backoff(
    cluster: &Cluster,
    agent: &Agent,
    name: &str,
    image: &str,
) -> anyhow::Result<Pod> {
    let mut seen_err = None;
    let mut seen = Vec::new();
    // ErrImagePull is reported only until the worker's next sync (`Periods::err_image_pull_visible`):
    // the wait polls every `TRANSIENT_POLL`, far inside that window, and records every reason.
    let pod = cluster
        .wait_pod_closely(
            "default",
            name,
            periods().api_pull_failure_then_backoff(),
            |p| {
                let (reason, message) = waiting(p)?;
                if seen.last() != Some(&reason) {
                    seen.push(reason.clone());
                }
                assert_eq!(phase(p), Some("Pending"), "{:#?}", p.status);
                match reason.as_str() {
                    "ErrImagePull" => {
                        seen_err.get_or_insert(message);
                        None
                    }
                    "ImagePullBackOff" if seen_err.is_some() => {
                        assert!(
                            message.starts_with(&format!("Back-off pulling image \"{image}\"")),
                            "{message}"
                        );
                        Some(p.clone())
                    }
                    "ImagePullBackOff" | "ContainerCreating" | "PodInitializing" | "" => None,
                    other => panic!("unexpected waiting reason {other}: {message}"),
                }
            },
        )
        .await
        .map_err(|e| {
            e.context(format!(
                "waiting reasons seen, in order: {seen:?}\n{}",
                agent_log_about(agent, name)
            ))
        })?;
    let message = seen_err.unwrap_or_default();
    assert!(
        message.starts_with(&format!("Failed to pull image \"{image}\"")),
        "ErrImagePull message: {message}"
    );
    Ok(pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_pulls_with_the_credentials_of_image_pull_secrets() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-img-secret").await?;
    let secret = format!("regcred-{}", agent.node);
    create_pull_secret(&cluster, &secret).await?;
    let name = format!("authed-{}", agent.node);
    let img = image("1.36");
    cluster
        .create_pod(
            "default",
            sleeper(&name, &img, Some("Always"), Some(&secret)),
            &agent.node,
        )
        .await?;
    let up = wait_running(&cluster, &agent, &name).await?;
    let status = status_of(&up, "main").expect("status of main");
    assert!(
        status.image_id.contains("sha256:"),
        "imageID {:?}",
        status.image_id
    );
    wait_event(
        &cluster,
        &name,
        periods().event_posted(),
        "Pulling",
        |r, m| r == "Pulling" && m == format!("Pulling image \"{img}\""),
    )
    .await?;
    wait_event(
        &cluster,
        &name,
        periods().event_posted(),
        "Pulled: Successfully pulled image",
        |r, m| r == "Pulled" && m.starts_with(&format!("Successfully pulled image \"{img}\"")),
    )
    .await?;
    cluster.delete_pod("default", &name).await?;
    cluster
        .wait_pod_deleted("default", &name, periods().api_pod_deleted(GRACE))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_without_credentials_fails_then_backs_off() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-img-noauth").await?;
    let name = format!("anonymous-{}", agent.node);
    let img = image("1.36");
    // Always: pulled even when an earlier test left the image on the node.
    cluster
        .create_pod(
            "default",
            sleeper(&name, &img, Some("Always"), None),
            &agent.node,
        )
        .await?;
    wait_pull_failure_then_backoff(&cluster, &agent, &name, &img).await?;
    wait_event(
        &cluster,
        &name,
        periods().event_posted(),
        "Failed: Failed to pull image",
        |r, m| r == "Failed" && m.contains(&format!("Failed to pull image \"{img}\"")),
    )
    .await?;
    assert!(
        agent.containers().await?.is_empty(),
        "no container may be created without its image"
    );
    cluster.delete_pod("default", &name).await?;
    cluster
        .wait_pod_deleted("default", &name, periods().api_pod_deleted(GRACE))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_defaults_to_always_and_pulls_even_when_present() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-img-latest").await?;
    let img = image("latest");
    // Put the image on the node first: only a policy of Always pulls it again (IfNotPresent would
    // report "already present on machine").
    pre_pull(&agent, &img).await?;
    let secret = format!("regcred-{}", agent.node);
    create_pull_secret(&cluster, &secret).await?;
    let name = format!("latest-{}", agent.node);
    let created = cluster
        .create_pod(
            "default",
            sleeper(&name, &img, None, Some(&secret)),
            &agent.node,
        )
        .await?;
    let policy = created
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image_pull_policy.clone());
    assert_eq!(
        policy.as_deref(),
        Some("Always"),
        "the API server defaults :latest to Always"
    );
    wait_running(&cluster, &agent, &name).await?;
    wait_event(
        &cluster,
        &name,
        periods().event_posted(),
        "Pulled: Successfully pulled image",
        |r, m| r == "Pulled" && m.starts_with(&format!("Successfully pulled image \"{img}\"")),
    )
    .await?;
    let all = events(&cluster, &name).await?;
    assert!(
        !all.iter().any(|(_, m)| m.contains("already present")),
        "{all:#?}"
    );
    cluster.delete_pod("default", &name).await?;
    cluster
        .wait_pod_deleted("default", &name, periods().api_pod_deleted(GRACE))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_with_an_absent_image_is_err_image_never_pull() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-img-never").await?;
    let name = format!("never-{}", agent.node);
    // A tag no one pushed or pulled: it cannot be on the node.
    let img = image(&format!("absent-{}", agent.node));
    cluster
        .create_pod(
            "default",
            sleeper(&name, &img, Some("Never"), None),
            &agent.node,
        )
        .await?;
    let (reason, message) = cluster
        .wait_pod("default", &name, periods().api_pod_start(), |p| {
            waiting(p).filter(|(r, _)| r == "ErrImageNeverPull")
        })
        .await?;
    assert_eq!(reason, "ErrImageNeverPull");
    assert_eq!(
        message,
        format!("Container image \"{img}\" is not present with pull policy of Never")
    );
    // It stays so: no pull, no container, the pod Pending, through a window in which the pod
    // worker syncs the pod again (its retry and its resync), watched all along.
    let window = Instant::now() + periods().worker_resynced();
    while Instant::now() < window {
        let p = cluster.pods("default").get(&name).await?;
        assert_eq!(phase(&p), Some("Pending"), "{:#?}", p.status);
        assert_eq!(
            waiting(&p).map(|(r, _)| r).as_deref(),
            Some("ErrImageNeverPull"),
            "{:#?}",
            p.status
        );
        assert!(agent.containers().await?.is_empty());
        tokio::time::sleep(mk_e2e::periods::POLL * 5).await;
    }
    let all = events(&cluster, &name).await?;
    assert!(
        !all.iter().any(|(r, _)| r == "Pulling" || r == "Pulled"),
        "{all:#?}"
    );
    cluster.delete_pod("default", &name).await?;
    cluster
        .wait_pod_deleted("default", &name, periods().api_pod_deleted(GRACE))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tag_keeps_its_pod_pending_while_others_run() -> anyhow::Result<()> {
    let (cluster, agent) = joined("e2e-img-notag").await?;
    let secret = format!("regcred-{}", agent.node);
    create_pull_secret(&cluster, &secret).await?;
    let broken = format!("notag-{}", agent.node);
    let img = image("no-such-tag");
    // No policy: IfNotPresent (a tag other than latest), and the image is absent, so it is pulled.
    cluster
        .create_pod(
            "default",
            sleeper(&broken, &img, None, Some(&secret)),
            &agent.node,
        )
        .await?;
    let healthy = format!("healthy-{}", agent.node);
    cluster
        .create_pod(
            "default",
            sleeper(&healthy, mk_e2e::BUSYBOX, Some("IfNotPresent"), None),
            &agent.node,
        )
        .await?;
    wait_running(&cluster, &agent, &healthy).await?;
    wait_pull_failure_then_backoff(&cluster, &agent, &broken, &img).await?;
    // The healthy pod kept running all along, and the broken one is still Pending.
    let h = cluster.pods("default").get(&healthy).await?;
    assert!(running(&h), "{:#?}", h.status);
    assert_eq!(
        status_of(&h, "main").map(|s| s.restart_count),
        Some(0),
        "{:#?}",
        h.status
    );
    let b = cluster.pods("default").get(&broken).await?;
    assert_eq!(phase(&b), Some("Pending"), "{:#?}", b.status);
    for n in [&broken, &healthy] {
        cluster.delete_pod("default", n).await?;
    }
    for n in [&broken, &healthy] {
        cluster
            .wait_pod_deleted("default", n, periods().api_pod_deleted(GRACE))
            .await?;
    }
    Ok(())
}
