//! Watch semantics: from a version, initial state, bookmarks, streaming lists, selectors,
//! timeouts and `410 Gone`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Api, quick_bookmarks, rv};
use kube_standin::StandinOptions;
use serde_json::json;

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn watch_from_a_resource_version_replays_history_then_streams() {
    let api = Api::start().await;
    let a = api.cm("a", json!({})).await;
    let from = rv(&a);
    api.cm("b", json!({})).await;
    api.merge(&format!("{CMS}/a"), json!({"data": {"k": "2"}}))
        .await;
    api.delete(&format!("{CMS}/b"), None).await;
    let mut w = api
        .watch(&format!("{CMS}?watch=true&resourceVersion={from}"))
        .await;
    assert_eq!(w.code, 200);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = w.next().await;
        let obj = &ev["object"];
        assert_eq!(obj["kind"], "ConfigMap");
        assert_eq!(obj["apiVersion"], "v1");
        seen.push((
            ev["type"].as_str().unwrap().to_string(),
            obj["metadata"]["name"].as_str().unwrap().to_string(),
            rv(obj),
        ));
    }
    assert_eq!(
        seen.iter()
            .map(|(t, n, _)| (t.as_str(), n.as_str()))
            .collect::<Vec<_>>(),
        [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "versions increase"
    );
    // Live events follow, and other resources do not leak in.
    api.pod("default", "p", "").await;
    api.cm("c", json!({})).await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "c");
    // Namespaced watches see only their namespace; all-namespace watches see all.
    let mut ns = api
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    let mut all = api
        .watch(&format!(
            "/api/v1/configmaps?watch=1&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    api.post(
        "/api/v1/namespaces/kube-system/configmaps",
        json!({"metadata": {"name": "sys"}}),
    )
    .await;
    api.cm("d", json!({})).await;
    assert_eq!(ns.next().await["object"]["metadata"]["name"], "d");
    assert_eq!(all.next().await["object"]["metadata"]["name"], "sys");
    assert_eq!(all.next().await["object"]["metadata"]["name"], "d");
}

#[tokio::test]
async fn watch_without_version_sends_current_state_as_added() {
    let api = Api::start().await;
    api.cm("a", json!({})).await;
    for q in [
        "watch=1",
        "watch=1&resourceVersion=0",
        "watch=1&resourceVersion=",
    ] {
        let mut w = api.watch(&format!("{CMS}?{q}")).await;
        let mut names = Vec::new();
        for _ in 0..2 {
            let ev = w.next().await;
            assert_eq!(ev["type"], "ADDED");
            names.push(
                ev["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(names, ["a", "kube-root-ca.crt"], "{q}");
        assert!(w.next_within(Duration::from_millis(200)).await.is_none());
    }
    // The legacy /watch/ prefix works too.
    let mut w = api
        .watch("/api/v1/watch/namespaces/default/configmaps/a")
        .await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "a");
    assert!(w.next_within(Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn bookmarks_carry_kind_and_progress() {
    let api = Api::start_with(quick_bookmarks()).await;
    let start = api.server.resource_version();
    let mut w = api
        .watch(&format!(
            "{PODS}?watch=1&allowWatchBookmarks=true&resourceVersion={start}"
        ))
        .await;
    // Writes to other resources advance the bookmark's version too.
    api.cm("x", json!({})).await;
    let now = api.server.resource_version();
    loop {
        let ev = w.next().await;
        assert_eq!(ev["type"], "BOOKMARK");
        assert_eq!(ev["object"]["kind"], "Pod");
        assert_eq!(ev["object"]["apiVersion"], "v1");
        if rv(&ev["object"]) >= now {
            break;
        }
    }
    // Without allowWatchBookmarks there are none.
    let mut quiet = api
        .watch(&format!("{PODS}?watch=1&resourceVersion={now}"))
        .await;
    assert!(
        quiet
            .next_within(Duration::from_millis(600))
            .await
            .is_none()
    );
    // Events are never older than a bookmark already sent.
    api.pod("default", "p", "").await;
    let mut last = 0;
    loop {
        let ev = w.next().await;
        let v = rv(&ev["object"]);
        assert!(v >= last);
        last = v;
        if ev["type"] == "ADDED" {
            break;
        }
    }
}

#[tokio::test]
async fn streaming_list_ends_with_the_initial_events_end_bookmark() {
    let api = Api::start_with(quick_bookmarks()).await;
    api.pod("default", "a", "n1").await;
    api.pod("default", "b", "n2").await;
    let mut w = api
        .watch(&format!(
            "{PODS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0&fieldSelector=spec.nodeName%3Dn1"
        ))
        .await;
    assert_eq!(w.code, 200);
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "a");
    let ev = w.next().await;
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(
        ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(rv(&ev["object"]), api.server.resource_version());
    api.pod("default", "c", "n1").await;
    let ev = w.next_change().await;
    assert_eq!(ev["object"]["metadata"]["name"], "c");
    // Invalid combinations are 422.
    let r = api
        .get(&format!("{PODS}?watch=1&sendInitialEvents=true"))
        .await;
    assert_eq!(r.code, 422);
    assert_eq!(r.body["reason"], "Invalid");
    let r = api
        .get(&format!(
            "{PODS}?watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1"
        ))
        .await;
    assert_eq!(r.code, 422);
    let r = api
        .get(&format!(
            "{PODS}?sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=1"
        ))
        .await;
    assert_eq!(r.code, 422, "sendInitialEvents is forbidden for list");
}

#[tokio::test]
async fn too_old_version_is_an_error_event_with_410() {
    let api = Api::start().await;
    let a = api.cm("a", json!({})).await;
    api.cm("b", json!({})).await;
    api.server.compact();
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={}", rv(&a)))
        .await;
    assert_eq!(w.code, 200, "HTTP 200, the error is in the stream");
    let ev = w.next().await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["kind"], "Status");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    assert!(
        ev["object"]["message"]
            .as_str()
            .unwrap()
            .contains("too old resource version")
    );
    assert!(
        w.next_within(Duration::from_secs(2)).await.is_none(),
        "then the stream ends"
    );
    // From the current version it works.
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    api.cm("c", json!({})).await;
    assert_eq!(w.next().await["type"], "ADDED");
    // Over HTTP too.
    let r = api.post("/standin/compact", json!({})).await;
    assert_eq!(r.code, 200);
}

#[tokio::test]
async fn history_ring_compacts_the_oldest_events() {
    let api = Api::start_with(StandinOptions {
        history_size: 3,
        ..StandinOptions::default()
    })
    .await;
    let first = api.cm("a", json!({})).await;
    for n in ["b", "c", "d", "e"] {
        api.cm(n, json!({})).await;
    }
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={}", rv(&first)))
        .await;
    assert_eq!(w.next().await["object"]["code"], 410);
    let recent = api.server.resource_version() - 1;
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={recent}"))
        .await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["metadata"]["name"], "e");
}

#[tokio::test]
async fn selector_watches_translate_transitions() {
    let api = Api::start().await;
    api.cm("x", json!({"app": "web"})).await;
    let from = api.server.resource_version();
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={from}&labelSelector=app%3Dweb"
        ))
        .await;
    // Stops matching: DELETED (with the new object).
    api.merge(
        &format!("{CMS}/x"),
        json!({"metadata": {"labels": {"app": "db"}}}),
    )
    .await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["metadata"]["labels"]["app"], "db");
    // Changes while not matching: nothing. Starts matching: ADDED.
    api.merge(&format!("{CMS}/x"), json!({"data": {"k": "2"}}))
        .await;
    api.merge(
        &format!("{CMS}/x"),
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    let ev = w.next().await;
    assert_eq!(ev["type"], "ADDED");
    assert_eq!(ev["object"]["data"]["k"], "2");
    api.merge(&format!("{CMS}/x"), json!({"data": {"k": "3"}}))
        .await;
    assert_eq!(w.next().await["type"], "MODIFIED");
    api.delete(&format!("{CMS}/x"), None).await;
    assert_eq!(w.next().await["type"], "DELETED");
    // A field-selected pod watch, as a kubelet runs it.
    let mut pw = api
        .watch(&format!(
            "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dmine&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    api.pod("default", "theirs", "other").await;
    api.pod("kube-system", "ours", "mine").await;
    let ev = pw.next().await;
    assert_eq!(ev["object"]["metadata"]["name"], "ours");
}

#[tokio::test]
async fn timeout_seconds_ends_the_stream() {
    let api = Api::start().await;
    let started = std::time::Instant::now();
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&timeoutSeconds=1&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    assert!(w.next_within(Duration::from_secs(5)).await.is_none());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_watches() {
    let api = Api::start().await;
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={}",
            api.server.resource_version()
        ))
        .await;
    let common::Api { server, .. } = api;
    let stop = tokio::spawn(server.shutdown());
    assert!(w.next_within(Duration::from_secs(5)).await.is_none());
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .unwrap()
        .unwrap();
}
