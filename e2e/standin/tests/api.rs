//! CRUD, list, errors, patches, status subresources and deletion semantics over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Api, assert_status, names, rv};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn resource_version_is_global_and_monotonic() {
    let api = Api::start().await;
    let start = api.server.resource_version();
    let a = api.cm("a", json!({})).await;
    let b = api.cm("b", json!({})).await;
    assert!(rv(&a) > start);
    assert!(rv(&b) > rv(&a));
    assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(
        a["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(a["kind"], "ConfigMap");
    assert_eq!(a["apiVersion"], "v1");
    // An update bumps it; a no-op update does not.
    let mut upd = b.clone();
    upd["data"]["k"] = json!("w");
    let r = api.put(&format!("{CMS}/b"), upd.clone()).await;
    assert_eq!(r.code, 200);
    let after = rv(&r.body);
    assert!(after > rv(&b));
    let r = api.put(&format!("{CMS}/b"), r.body.clone()).await;
    assert_eq!(r.code, 200);
    assert_eq!(rv(&r.body), after, "a no-op write keeps the version");
    // A lease in another group shares the sequence.
    let r = api
        .post(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": "node-1"}, "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(rv(&r.body) > after);
    let list = api.get(CMS).await.body;
    assert_eq!(
        list["metadata"]["resourceVersion"],
        json!(rv(&r.body).to_string())
    );
    assert_eq!(list["kind"], "ConfigMapList");
}

#[tokio::test]
async fn generate_name_and_get() {
    let api = Api::start().await;
    let r = api
        .post(
            CMS,
            json!({"metadata": {"generateName": "gen-"}, "data": {}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let name = r.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let got = api.get(&format!("{CMS}/{name}")).await;
    assert_eq!(got.code, 200);
    assert_eq!(got.body, r.body);
}

#[tokio::test]
async fn errors_are_json_status_objects() {
    let api = Api::start().await;
    let r = api.get(&format!("{CMS}/missing")).await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.body["details"]["name"], "missing");
    assert_eq!(r.body["details"]["kind"], "configmaps");
    assert_eq!(r.body["message"], "configmaps \"missing\" not found");
    let r = api
        .get("/apis/coordination.k8s.io/v1/namespaces/default/leases/x")
        .await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.body["details"]["group"], "coordination.k8s.io");
    assert_status(&api.get("/api/v1/nothing").await, 404, "NotFound");

    api.cm("dup", json!({})).await;
    let r = api.post(CMS, json!({"metadata": {"name": "dup"}})).await;
    assert_status(&r, 409, "AlreadyExists");

    let r = api
        .send_raw(reqwest::Method::POST, CMS, "application/json", "{not json")
        .await;
    assert_status(&r, 400, "BadRequest");
    let r = api
        .post(CMS, json!({"kind": "Secret", "metadata": {"name": "x"}}))
        .await;
    assert_status(&r, 400, "BadRequest");
    let r = api
        .post(CMS, json!({"metadata": {"name": "Bad_Name"}}))
        .await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    let r = api.post(CMS, json!({"metadata": {}})).await;
    assert_status(&r, 422, "Invalid");
    let r = api.put(CMS, json!({})).await;
    assert_status(&r, 405, "MethodNotAllowed");
    let r = api
        .patch(
            &format!("{CMS}/dup"),
            "application/apply-patch+yaml",
            json!({}),
        )
        .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    let r = api.get(&format!("{CMS}?labelSelector=a%20in%20b")).await;
    assert_status(&r, 400, "BadRequest");
    let r = api.get(&format!("{CMS}?fieldSelector=data.k%3Dv")).await;
    assert_status(&r, 400, "BadRequest");
    let r = api.get(&format!("{CMS}?resourceVersionMatch=Exact")).await;
    assert_status(&r, 422, "Invalid");
    let r = api
        .post(
            "/api/v1/namespaces/nope/configmaps",
            json!({"metadata": {"name": "x"}}),
        )
        .await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.body["details"]["kind"], "namespaces");
    let r = api
        .post(
            CMS,
            json!({"metadata": {"name": "x", "namespace": "kube-system"}}),
        )
        .await;
    assert_status(&r, 400, "BadRequest");
}

#[tokio::test]
async fn list_pagination_is_consistent_and_expires() {
    let api = Api::start().await;
    for i in 0..5 {
        api.cm(&format!("p{i}"), json!({"page": "yes"})).await;
    }
    let first = api
        .get(&format!("{CMS}?labelSelector=page%3Dyes&limit=2"))
        .await
        .body;
    assert_eq!(names(&first), ["p0", "p1"]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let list_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Changes after the first page do not show up in later pages.
    api.cm("p2a", json!({"page": "yes"})).await;
    api.delete(&format!("{CMS}/p3"), None).await;
    let second = api
        .get(&format!(
            "{CMS}?labelSelector=page%3Dyes&limit=2&continue={token}"
        ))
        .await
        .body;
    assert_eq!(names(&second), ["p2", "p3"]);
    assert_eq!(second["metadata"]["resourceVersion"], json!(list_rv));
    let token2 = second["metadata"]["continue"].as_str().unwrap().to_string();
    let third = api
        .get(&format!(
            "{CMS}?labelSelector=page%3Dyes&limit=2&continue={token2}"
        ))
        .await
        .body;
    assert_eq!(names(&third), ["p4"]);
    assert!(third["metadata"].get("continue").is_none());
    // remainingItemCount without selectors.
    let all = api.get(&format!("{CMS}?limit=1")).await.body;
    assert!(all["metadata"]["remainingItemCount"].as_u64().unwrap() >= 5);
    // After compaction the token is too old.
    api.server.compact();
    let r = api
        .get(&format!(
            "{CMS}?labelSelector=page%3Dyes&limit=2&continue={token}"
        ))
        .await;
    assert_status(&r, 410, "Expired");
    // An exact list at a compacted version is 410 too; at the current one it works.
    let r = api
        .get(&format!(
            "{CMS}?resourceVersion={list_rv}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_status(&r, 410, "Expired");
    let cur = api.server.resource_version();
    let r = api
        .get(&format!(
            "{CMS}?resourceVersion={cur}&resourceVersionMatch=Exact"
        ))
        .await;
    assert_eq!(r.code, 200);
    let r = api
        .get(&format!("{CMS}?resourceVersion={}", cur + 100))
        .await;
    assert_status(&r, 504, "Timeout");
    let r = api.get(&format!("{CMS}?continue=garbage")).await;
    assert_status(&r, 400, "BadRequest");
}

#[tokio::test]
async fn exact_list_reconstructs_an_older_state() {
    let api = Api::start().await;
    api.cm("x", json!({})).await;
    let before = api.server.resource_version();
    api.delete(&format!("{CMS}/x"), None).await;
    api.cm("y", json!({})).await;
    let old = api
        .get(&format!(
            "{CMS}?resourceVersion={before}&resourceVersionMatch=Exact"
        ))
        .await
        .body;
    assert_eq!(names(&old), ["kube-root-ca.crt", "x"]);
    assert_eq!(names(&api.get(CMS).await.body), ["kube-root-ca.crt", "y"]);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let api = Api::start().await;
    api.cm("a", json!({"app": "web", "tier": "front"})).await;
    api.cm("b", json!({"app": "db"})).await;
    api.cm("c", json!({})).await;
    let sel = |s: &str| {
        let q = form_encode(s);
        let api = &api;
        async move { names(&api.get(&format!("{CMS}?labelSelector={q}")).await.body) }
    };
    assert_eq!(sel("app=web").await, ["a"]);
    assert_eq!(sel("app==web").await, ["a"]);
    assert_eq!(sel("app!=web").await, ["b", "c", "kube-root-ca.crt"]);
    assert_eq!(sel("app in (web,db)").await, ["a", "b"]);
    assert_eq!(sel("app notin (web)").await, ["b", "c", "kube-root-ca.crt"]);
    assert_eq!(sel("app").await, ["a", "b"]);
    assert_eq!(sel("!app").await, ["c", "kube-root-ca.crt"]);
    assert_eq!(sel("app,tier=front").await, ["a"]);

    api.pod("default", "on-n1", "n1").await;
    api.pod("default", "on-n2", "n2").await;
    api.pod("kube-system", "sys", "n1").await;
    api.merge(
        &format!("{PODS}/on-n2/status"),
        json!({"status": {"phase": "Running"}}),
    )
    .await;
    let fsel = |s: &str, path: &str| {
        let q = form_encode(s);
        let url = format!("{path}?fieldSelector={q}");
        let api = &api;
        async move { names(&api.get(&url).await.body) }
    };
    assert_eq!(
        fsel("spec.nodeName=n1", "/api/v1/pods").await,
        ["on-n1", "sys"]
    );
    assert_eq!(fsel("spec.nodeName=n1", PODS).await, ["on-n1"]);
    assert_eq!(fsel("spec.nodeName!=n1", "/api/v1/pods").await, ["on-n2"]);
    assert_eq!(
        fsel("status.phase=Running", "/api/v1/pods").await,
        ["on-n2"]
    );
    assert_eq!(
        fsel(
            "metadata.namespace=kube-system,spec.nodeName=n1",
            "/api/v1/pods"
        )
        .await,
        ["sys"]
    );
    assert_eq!(
        fsel("metadata.name==on-n1", "/api/v1/pods").await,
        ["on-n1"]
    );
    let all = api.get("/api/v1/pods").await.body;
    assert_eq!(all["kind"], "PodList");
    assert!(
        all["items"][0].get("kind").is_none(),
        "items carry no kind, like the real server"
    );

    let r = api
        .post(
            "/api/v1/namespaces/default/events",
            json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "on-n1", "namespace": "default"},
                   "reason": "Started", "message": "m", "type": "Normal", "source": {"component": "kubelet"}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        fsel(
            "involvedObject.kind=Pod,involvedObject.name=on-n1",
            "/api/v1/events"
        )
        .await,
        ["e1"]
    );
    assert_eq!(
        fsel("involvedObject.name=other", "/api/v1/events").await,
        Vec::<String>::new()
    );
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn put_optimistic_concurrency() {
    let api = Api::start().await;
    let cm = api.cm("c", json!({})).await;
    let mut stale = cm.clone();
    let mut fresh = cm.clone();
    fresh["data"]["k"] = json!("1");
    assert_eq!(api.put(&format!("{CMS}/c"), fresh).await.code, 200);
    stale["data"]["k"] = json!("2");
    let r = api.put(&format!("{CMS}/c"), stale.clone()).await;
    assert_status(&r, 409, "Conflict");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );
    // Without a resourceVersion the update is unconditional.
    stale["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let r = api.put(&format!("{CMS}/c"), stale).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["data"]["k"], "2");
    // A different uid in the body is a precondition failure.
    let mut other = r.body.clone();
    other["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000000");
    assert_status(&api.put(&format!("{CMS}/c"), other).await, 409, "Conflict");
    // Name mismatch.
    let mut renamed = r.body.clone();
    renamed["metadata"]["name"] = json!("d");
    assert_status(
        &api.put(&format!("{CMS}/c"), renamed).await,
        400,
        "BadRequest",
    );
    // PUT of an absent configmap: 404; of an absent lease: created (AllowCreateOnUpdate).
    let r = api
        .put(
            &format!("{CMS}/absent"),
            json!({"metadata": {"name": "absent"}}),
        )
        .await;
    assert_status(&r, 404, "NotFound");
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let r = api
        .put(
            &format!("{leases}/n1"),
            json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    // Leases refuse unconditional updates.
    let mut lease = r.body.clone();
    lease["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let r = api.put(&format!("{leases}/n1"), lease).await;
    assert_status(&r, 422, "Invalid");
}

#[tokio::test]
async fn graceful_pod_deletion() {
    let api = Api::start().await;
    let pod = api.pod("default", "p", "node-1").await;
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
    let mut w = api
        .watch(&format!("{PODS}?watch=1&resourceVersion={}", rv(&pod)))
        .await;
    // First delete: graceful, with the pod's own grace period.
    let r = api.delete(&format!("{PODS}/p"), None).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["kind"], "Pod");
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let ts = r.body["metadata"]["deletionTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let ev = w.next().await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["metadata"]["deletionTimestamp"], json!(ts));
    assert_eq!(api.get(&format!("{PODS}/p")).await.code, 200);
    // A longer grace period changes nothing; a shorter one shortens it.
    let r = api
        .delete(
            &format!("{PODS}/p"),
            Some(json!({"gracePeriodSeconds": 60})),
        )
        .await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 30);
    let r = api
        .delete(&format!("{PODS}/p?gracePeriodSeconds=10"), None)
        .await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 10);
    assert_eq!(w.next().await["type"], "MODIFIED");
    // Status updates cannot remove the deletion timestamp.
    let r = api
        .merge(
            &format!("{PODS}/p/status"),
            json!({"metadata": {"deletionTimestamp": null}, "status": {"phase": "Running"}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(w.next().await["type"], "MODIFIED");
    // Grace 0 (what the kubelet sends at the end): gone, with a final DELETED event.
    let uid = pod["metadata"]["uid"].as_str().unwrap();
    let r = api
        .delete(
            &format!("{PODS}/p"),
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}})),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["kind"], "Pod");
    let ev = w.next().await;
    assert_eq!(ev["type"], "MODIFIED");
    assert_eq!(ev["object"]["metadata"]["deletionGracePeriodSeconds"], 0);
    let ev = w.next().await;
    assert_eq!(ev["type"], "DELETED");
    assert!(rv(&ev["object"]) > rv(&pod));
    assert_status(&api.get(&format!("{PODS}/p")).await, 404, "NotFound");

    // Unbound pods and terminal pods are deleted at once.
    api.pod("default", "unbound", "").await;
    let r = api.delete(&format!("{PODS}/unbound"), None).await;
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(api.get(&format!("{PODS}/unbound")).await.code, 404);
    api.pod("default", "done", "node-1").await;
    api.merge(
        &format!("{PODS}/done/status"),
        json!({"status": {"phase": "Succeeded"}}),
    )
    .await;
    api.delete(&format!("{PODS}/done"), None).await;
    assert_eq!(api.get(&format!("{PODS}/done")).await.code, 404);
    // Other kinds: immediate, answered with a Status.
    api.cm("gone", json!({})).await;
    let r = api.delete(&format!("{CMS}/gone"), None).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.body["kind"], "Status");
    assert_eq!(r.body["status"], "Success");
    assert_eq!(r.body["details"]["kind"], "configmaps");
    assert_status(
        &api.delete(&format!("{CMS}/gone"), None).await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn delete_preconditions() {
    let api = Api::start().await;
    let cm = api.cm("c", json!({})).await;
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(json!({"preconditions": {"uid": "not-it"}})),
        )
        .await;
    assert_status(&r, 409, "Conflict");
    assert!(
        r.body["message"].as_str().unwrap().contains("Precondition")
            || r.body["message"].as_str().unwrap().contains("precondition")
    );
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(json!({"preconditions": {"resourceVersion": "1"}})),
        )
        .await;
    assert_status(&r, 409, "Conflict");
    let r = api
        .delete(
            &format!("{CMS}/c"),
            Some(json!({"preconditions": {"uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"]}})),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let api = Api::start().await;
    let r = api
        .post(
            CMS,
            json!({"metadata": {"name": "f", "finalizers": ["example.com/x"]}}),
        )
        .await;
    assert_eq!(r.code, 201);
    let r = api.delete(&format!("{CMS}/f"), None).await;
    assert_eq!(r.code, 200);
    assert_eq!(
        r.body["kind"], "ConfigMap",
        "a pending deletion answers the object"
    );
    assert!(r.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r.body["metadata"]["deletionGracePeriodSeconds"], 0);
    let cur = api.get(&format!("{CMS}/f")).await;
    assert_eq!(cur.code, 200);
    // No new finalizers while deleting.
    let r = api
        .merge(
            &format!("{CMS}/f"),
            json!({"metadata": {"finalizers": ["example.com/x", "example.com/y"]}}),
        )
        .await;
    assert_status(&r, 422, "Invalid");
    // Removing the last finalizer deletes it.
    let r = api
        .patch(
            &format!("{CMS}/f"),
            "application/json-patch+json",
            json!([{"op": "remove", "path": "/metadata/finalizers"}]),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_status(&api.get(&format!("{CMS}/f")).await, 404, "NotFound");

    // A bound pod with a finalizer: graceful, then grace 0 leaves it until the finalizer goes.
    let r = api
        .post(
            PODS,
            json!({"metadata": {"name": "fp", "finalizers": ["example.com/x"]},
                   "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]}}),
        )
        .await;
    assert_eq!(r.code, 201);
    let r = api
        .delete(&format!("{PODS}/fp?gracePeriodSeconds=0"), None)
        .await;
    assert_eq!(r.code, 200);
    assert_eq!(api.get(&format!("{PODS}/fp")).await.code, 200);
    let r = api
        .merge(
            &format!("{PODS}/fp"),
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(api.get(&format!("{PODS}/fp")).await.code, 404);
}

#[tokio::test]
async fn patch_types() {
    let api = Api::start().await;
    let cm = api.cm("p", json!({"a": "1"})).await;
    let url = format!("{CMS}/p");
    let r = api
        .patch(
            &url,
            "application/json-patch+json",
            json!([{"op": "add", "path": "/data/n", "value": "x"}]),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["data"], json!({"k": "v", "n": "x"}));
    let r = api
        .patch(
            &url,
            "application/json-patch+json",
            json!([{"op": "test", "path": "/data/n", "value": "nope"}]),
        )
        .await;
    assert_status(&r, 422, "Invalid");
    let r = api
        .merge(&url, json!({"metadata": {"labels": {"a": null, "b": "2"}}}))
        .await;
    assert_eq!(r.body["metadata"]["labels"], json!({"b": "2"}));
    let r = api
        .patch(
            &url,
            "application/strategic-merge-patch+json",
            json!({"data": {"k": null}}),
        )
        .await;
    assert_eq!(r.body["data"], json!({"n": "x"}));
    // A stale resourceVersion in a patch is a conflict.
    let r = api
        .merge(&url, json!({"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]}, "data": {"z": "1"}}))
        .await;
    assert_status(&r, 409, "Conflict");
    // The current one is fine.
    let cur = api.get(&url).await.body;
    let r = api
        .merge(&url, json!({"metadata": {"resourceVersion": cur["metadata"]["resourceVersion"]}, "data": {"z": "1"}}))
        .await;
    assert_eq!(r.code, 200);
    let r = api.merge(&format!("{CMS}/absent"), json!({})).await;
    assert_status(&r, 404, "NotFound");
    let r = api
        .patch(
            &url,
            "application/json-patch+json",
            json!({"not": "a list"}),
        )
        .await;
    assert_status(&r, 400, "BadRequest");
}

#[tokio::test]
async fn strategic_merge_of_pod_status() {
    let api = Api::start().await;
    api.pod("default", "s", "node-1").await;
    let url = format!("{PODS}/s/status");
    let smp = "application/strategic-merge-patch+json";
    let r = api
        .patch(
            &url,
            smp,
            json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0, "image": "busybox:1.36", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}],
                "podIPs": [{"ip": "10.0.0.5"}]
            }}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    // Conditions merge by type, honouring $setElementOrder; containerStatuses (no merge key
    // in k8s.io/api) are replaced whole.
    let r = api
        .patch(
            &url,
            smp,
            json!({"metadata": {"uid": r.body["metadata"]["uid"]}, "status": {
                "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "busybox:1.36", "imageID": "x", "started": true, "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]
            }}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let st = &r.body["status"];
    assert_eq!(
        st["conditions"],
        json!([{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
    );
    assert_eq!(st["containerStatuses"].as_array().unwrap().len(), 1);
    assert!(st["containerStatuses"][0]["state"].get("waiting").is_none());
    assert_eq!(
        st["containerStatuses"][0]["state"]["running"]["startedAt"],
        "2024-01-01T00:00:00Z"
    );
    assert_eq!(st["podIPs"], json!([{"ip": "10.0.0.5"}]));
    assert_eq!(st["qosClass"], "BestEffort");
    // A uid that is not the pod's is refused (the kubelet's guard against recreated pods).
    let r = api
        .patch(&url, smp, json!({"metadata": {"uid": "00000000-0000-4000-8000-000000000000"}, "status": {"phase": "Failed"}}))
        .await;
    assert_status(&r, 422, "Invalid");
    // $patch: delete of a condition.
    let r = api
        .patch(
            &url,
            smp,
            json!({"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}}),
        )
        .await;
    assert_eq!(
        r.body["status"]["conditions"],
        json!([{"type": "PodScheduled", "status": "True"}])
    );
}

#[tokio::test]
async fn node_status_strategic_merge() {
    let api = Api::start().await;
    let r = api
        .post(
            "/api/v1/nodes",
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
                   "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}],
                              "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        r.body["status"]["conditions"][0]["type"], "Ready",
        "nodes keep status on create"
    );
    let r = api
        .patch(
            "/api/v1/nodes/n1/status",
            "application/strategic-merge-patch+json",
            json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}, {"type": "MemoryPressure", "status": "False"}],
                "addresses": [{"type": "Hostname", "address": "n1"}]
            }, "spec": {"unschedulable": true}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let conds = r.body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2);
    assert_eq!(conds[0]["status"], "True");
    assert_eq!(r.body["status"]["addresses"].as_array().unwrap().len(), 2);
    assert!(
        r.body["spec"].get("unschedulable").is_none(),
        "status writes keep spec"
    );
    let nodes = api
        .get("/api/v1/nodes?fieldSelector=metadata.name%3Dn1")
        .await
        .body;
    assert_eq!(names(&nodes), ["n1"]);
}

#[tokio::test]
async fn status_subresource_isolation() {
    let api = Api::start().await;
    let pod = api.pod("default", "iso", "node-1").await;
    assert_eq!(pod["status"]["phase"], "Pending");
    // Main resource writes ignore status.
    let mut body = pod.clone();
    body["status"]["phase"] = json!("Running");
    body["metadata"]["labels"]["x"] = json!("y");
    let r = api.put(&format!("{PODS}/iso"), body).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Pending");
    assert_eq!(r.body["metadata"]["labels"]["x"], "y");
    // Status writes ignore spec.
    let mut body = r.body.clone();
    body["status"]["phase"] = json!("Running");
    body["spec"]["containers"][0]["image"] = json!("other");
    let r = api.put(&format!("{PODS}/iso/status"), body).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Running");
    assert_eq!(r.body["spec"]["containers"][0]["image"], "busybox:1.36");
    let r = api
        .merge(
            &format!("{PODS}/iso/status"),
            json!({"spec": {"activeDeadlineSeconds": 5}, "status": {"message": "m"}}),
        )
        .await;
    assert!(r.body["spec"].get("activeDeadlineSeconds").is_none());
    assert_eq!(r.body["status"]["message"], "m");
    // Pod spec is immutable except for a few fields.
    let r = api
        .merge(
            &format!("{PODS}/iso"),
            json!({"spec": {"nodeName": "elsewhere"}}),
        )
        .await;
    assert_status(&r, 422, "Invalid");
    let r = api
        .merge(
            &format!("{PODS}/iso"),
            json!({"spec": {"activeDeadlineSeconds": 100}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["metadata"]["generation"], 2);
    // No status subresource on configmaps.
    assert_status(
        &api.get(&format!("{CMS}/kube-root-ca.crt/status")).await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn certificate_signing_requests_approval_and_status() {
    const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let api = Api::start().await;
    let r = api
        .post(
            CSRS,
            json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                   "metadata": {"generateName": "csr-"},
                   "spec": {"request": "LS0tLQ==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                            "usages": ["digital signature", "client auth"]},
                   "status": {"certificate": "Zm9yZ2Vk"}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let name = r.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("csr-"), "{name}");
    assert!(
        r.body["status"].get("certificate").is_none(),
        "a new request has no certificate: {}",
        r.body
    );
    // The approval subresource takes the conditions only.
    let mut body = r.body.clone();
    body["status"] = json!({"conditions": [{"type": "Approved", "status": "True", "reason": "Test"}],
                            "certificate": "Zm9yZ2Vk"});
    body["spec"]["signerName"] = json!("example.com/other");
    let r = api.put(&format!("{CSRS}/{name}/approval"), body).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["status"]["conditions"][0]["type"], "Approved");
    assert!(r.body["status"].get("certificate").is_none(), "{}", r.body);
    assert_eq!(
        r.body["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    // The status subresource sets the certificate.
    let mut body = r.body.clone();
    body["status"]["certificate"] = json!("aXNzdWVk");
    let r = api.put(&format!("{CSRS}/{name}/status"), body).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["status"]["certificate"], "aXNzdWVk");
    let r = api
        .get(&format!(
            "{CSRS}?fieldSelector=spec.signerName%3Dkubernetes.io%2Fkube-apiserver-client-kubelet"
        ))
        .await;
    assert_eq!(names(&r.body), vec![name]);
    // kubelet's digested names are path segments, not DNS subdomains.
    let r = api
        .post(
            CSRS,
            json!({"metadata": {"name": "node-csr-Q1otU6AvLyUOK_Tqbpx-A"},
                   "spec": {"request": "LS0tLQ==", "signerName": "kubernetes.io/kube-apiserver-client-kubelet"}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
}

#[tokio::test]
async fn pods_get_defaults_admission_and_drop_unknown_fields() {
    let api = Api::start().await;
    let r = api
        .post(
            PODS,
            json!({"metadata": {"name": "d"}, "spec": {"nodeName": "n", "bogusField": 1, "containers": [
                {"name": "c", "image": "reg:5000/img:1", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}
            ]}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let p = &r.body;
    assert!(p["spec"].get("bogusField").is_none());
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("unknown field \\\"spec.bogusField\\\""),
        "{:?}",
        r.warnings
    );
    assert_eq!(
        p["status"],
        json!({"phase": "Pending", "qosClass": "Guaranteed"})
    );
    assert_eq!(p["metadata"]["generation"], 1);
    let c = &p["spec"]["containers"][0];
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "1", "memory": "64Mi"})
    );
    assert_eq!(p["spec"]["restartPolicy"], "Always");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let vol = &p["spec"]["volumes"][0];
    assert!(
        vol["name"]
            .as_str()
            .unwrap()
            .starts_with("kube-api-access-")
    );
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    // Strict field validation refuses unknown fields.
    let r = api
        .post(
            &format!("{PODS}?fieldValidation=Strict"),
            json!({"metadata": {"name": "s"}, "spec": {"bogus": 1, "containers": [{"name": "c", "image": "i"}]}}),
        )
        .await;
    assert_status(&r, 400, "BadRequest");
    // Type errors are 400, missing required values 422.
    let r = api
        .post(
            PODS,
            json!({"metadata": {"name": "t"}, "spec": {"containers": "x"}}),
        )
        .await;
    assert_status(&r, 400, "BadRequest");
    let r = api
        .post(
            PODS,
            json!({"metadata": {"name": "t"}, "spec": {"containers": []}}),
        )
        .await;
    assert_status(&r, 422, "Invalid");
    // No automount: no token volume. Missing service account: forbidden.
    let r = api
        .post(PODS, json!({"metadata": {"name": "na"}, "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "i"}]}}))
        .await;
    assert!(r.body["spec"].get("volumes").is_none(), "{}", r.body);
    let r = api
        .post(PODS, json!({"metadata": {"name": "nosa"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "c", "image": "i"}]}}))
        .await;
    assert_status(&r, 403, "Forbidden");
    // Dry run does not store.
    let r = api
        .post(&format!("{PODS}?dryRun=All"), json!({"metadata": {"name": "dry"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        .await;
    assert_eq!(r.code, 201);
    assert_eq!(api.get(&format!("{PODS}/dry")).await.code, 404);
}

#[tokio::test]
async fn secrets_fold_string_data() {
    let api = Api::start().await;
    let r = api
        .post(
            "/api/v1/namespaces/default/secrets",
            json!({"metadata": {"name": "s"}, "stringData": {"a": "b"}, "data": {"c": "ZA=="}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["data"], json!({"a": "Yg==", "c": "ZA=="}));
    assert_eq!(r.body["type"], "Opaque");
    assert!(r.body.get("stringData").is_none());
    let r = api
        .post(
            "/api/v1/namespaces/default/secrets",
            json!({"metadata": {"name": "bad"}, "data": {"a": "!!!"}}),
        )
        .await;
    assert_status(&r, 400, "BadRequest");
}

#[tokio::test]
async fn service_account_tokens() {
    let api = Api::start().await;
    let pod = api.pod("default", "tp", "n").await;
    let url = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let r = api
        .post(
            url,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
                "audiences": ["api"], "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "tp", "uid": pod["metadata"]["uid"]}}}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["kind"], "TokenRequest");
    let token = r.body["status"]["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert!(
        r.body["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(r.body["spec"]["audiences"], json!(["api"]));
    let r = api
        .post(url, json!({"spec": {"expirationSeconds": 60}}))
        .await;
    assert_status(&r, 422, "Invalid");
    let r = api
        .post(
            url,
            json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "tp", "uid": "other"}}}),
        )
        .await;
    assert_status(&r, 409, "Conflict");
    let r = api
        .post(
            "/api/v1/namespaces/default/serviceaccounts/ghost/token",
            json!({}),
        )
        .await;
    assert_status(&r, 404, "NotFound");
}

#[tokio::test]
async fn namespace_lifecycle() {
    let api = Api::start().await;
    let r = api
        .post("/api/v1/namespaces", json!({"metadata": {"name": "team"}}))
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Active");
    assert_eq!(
        r.body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    assert_eq!(
        api.get("/api/v1/namespaces/team/serviceaccounts/default")
            .await
            .code,
        200
    );
    api.pod("team", "bound", "n1").await;
    api.pod("team", "free", "").await;
    let r = api.delete("/api/v1/namespaces/team", None).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["status"]["phase"], "Terminating");
    // Content is deleted (the bound pod gracefully); new content is refused.
    assert_eq!(api.get("/api/v1/namespaces/team/pods/free").await.code, 404);
    let bound = api.get("/api/v1/namespaces/team/pods/bound").await.body;
    assert!(bound["metadata"]["deletionTimestamp"].is_string());
    let r = api
        .post(
            "/api/v1/namespaces/team/configmaps",
            json!({"metadata": {"name": "x"}}),
        )
        .await;
    assert_status(&r, 403, "Forbidden");
    // Once the kubelet finishes the pod, the namespace goes.
    api.delete(
        "/api/v1/namespaces/team/pods/bound?gracePeriodSeconds=0",
        None,
    )
    .await;
    assert_status(&api.get("/api/v1/namespaces/team").await, 404, "NotFound");
    assert_status(
        &api.delete("/api/v1/namespaces/default", None).await,
        403,
        "Forbidden",
    );
}

#[tokio::test]
async fn discovery_documents() {
    let api = Api::start().await;
    let v = api.get("/version").await.body;
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1."));
    let a = api.get("/api").await.body;
    assert_eq!(a["kind"], "APIVersions");
    assert_eq!(a["versions"], json!(["v1"]));
    let g = api.get("/apis").await.body;
    assert_eq!(g["kind"], "APIGroupList");
    let groups: Vec<&str> = g["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(groups.contains(&"coordination.k8s.io") && groups.contains(&"events.k8s.io"));
    let core = api.get("/api/v1").await.body;
    assert_eq!(core["kind"], "APIResourceList");
    let pods = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods")
        .unwrap();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    assert!(pods["verbs"].as_array().unwrap().contains(&json!("watch")));
    let leases = api.get("/apis/coordination.k8s.io/v1").await.body;
    assert_eq!(leases["groupVersion"], "coordination.k8s.io/v1");
    let o = api.get("/openapi/v3").await.body;
    assert!(o["paths"]["api/v1"].is_object());
    assert_eq!(api.get("/healthz").await.body, Value::String("ok".into()));
}

#[tokio::test]
async fn events_k8s_io_validation() {
    let api = Api::start().await;
    let url = "/apis/events.k8s.io/v1/namespaces/default/events";
    let r = api
        .post(url, json!({"metadata": {"name": "e"}, "reason": "X"}))
        .await;
    assert_status(&r, 422, "Invalid");
    let r = api
        .post(
            url,
            json!({"metadata": {"name": "e"}, "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "mini-kubelet",
                   "reportingInstance": "n1", "action": "Started", "reason": "Started", "type": "Normal",
                   "regarding": {"kind": "Pod", "name": "p", "namespace": "default"}, "note": "n"}),
        )
        .await;
    assert_eq!(r.code, 201, "{}", r.body);
    let r = api
        .post(
            "/api/v1/namespaces/default/events",
            json!({"metadata": {"name": "bad"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": "other"}, "reason": "X"}),
        )
        .await;
    assert_status(&r, 422, "Invalid");
}

#[tokio::test]
async fn pod_status_rules() {
    let api = Api::start().await;
    let r = api
        .post(
            PODS,
            json!({"metadata": {"name": "once"}, "spec": {"nodeName": "n", "restartPolicy": "Never",
                   "containers": [{"name": "c", "image": "i"}]}}),
        )
        .await;
    assert_eq!(r.code, 201);
    let url = format!("{PODS}/once/status");
    let done = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 0,
        "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 0}}}]}});
    assert_eq!(api.merge(&url, done).await.code, 200);
    // A terminated container of a RestartPolicy=Never pod may not run again.
    let again = json!({"status": {"containerStatuses": [{"name": "c", "ready": true, "restartCount": 1,
        "image": "i", "imageID": "", "state": {"running": {}}}]}});
    assert_status(&api.merge(&url, again).await, 422, "Invalid");
    // The QoS class is immutable.
    assert_status(
        &api.merge(&url, json!({"status": {"qosClass": "Guaranteed"}}))
            .await,
        422,
        "Invalid",
    );
    // Labels and annotations may change through /status (pods' status strategy keeps only
    // spec, ownerReferences and deletionTimestamp), ownerReferences may not.
    let r = api
        .merge(
            &url,
            json!({"metadata": {"labels": {"via": "status"}, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u"}]}}),
        )
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.body["metadata"]["labels"]["via"], "status");
    assert!(r.body["metadata"].get("ownerReferences").is_none());
    // Mirror pods: need a node, keep their annotation, reference no service account.
    let mirror = |node: &str| {
        json!({"metadata": {"name": "static-n", "annotations": {"kubernetes.io/config.mirror": "abc"}},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
    };
    assert_status(&api.post(PODS, mirror("")).await, 422, "Invalid");
    let r = api.post(PODS, mirror("n")).await;
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(
        r.body["spec"].get("volumes").is_none(),
        "no token volume for mirror pods"
    );
    let r = api
        .merge(
            &format!("{PODS}/static-n"),
            json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": null}}}),
        )
        .await;
    assert_status(&r, 422, "Invalid");
}

#[tokio::test]
async fn delete_collection_with_selector() {
    let api = Api::start().await;
    api.cm("a", json!({"sweep": "yes"})).await;
    api.cm("b", json!({"sweep": "yes"})).await;
    api.cm("c", json!({})).await;
    let r = api
        .delete(&format!("{CMS}?labelSelector=sweep%3Dyes"), None)
        .await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(names(&r.body), ["a", "b"]);
    assert_eq!(names(&api.get(CMS).await.body), ["c", "kube-root-ca.crt"]);
}
