//! Helpers shared by the integration tests: an in-process stand-in and a small HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use kube_standin::{Standin, StandinHandle, StandinOptions};
use serde_json::{Value, json};

pub struct Api {
    pub server: StandinHandle,
    pub http: reqwest::Client,
    pub base: String,
}

pub struct Resp {
    pub code: u16,
    pub body: Value,
    pub warnings: Vec<String>,
}

impl Api {
    pub async fn start() -> Self {
        Self::start_with(StandinOptions::default()).await
    }

    pub async fn start_with(opts: StandinOptions) -> Self {
        let server = Standin::start("127.0.0.1:0", opts).await.unwrap();
        let base = server.url();
        Self {
            server,
            http: reqwest::Client::new(),
            base,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            code,
            body,
            warnings,
        }
    }

    pub async fn send_raw(&self, m: reqwest::Method, path: &str, ct: &str, body: &str) -> Resp {
        self.send(
            self.http
                .request(m, format!("{}{path}", self.base))
                .header("content-type", ct)
                .body(body.to_string()),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: Value) -> Resp {
        self.send(
            self.http
                .patch(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body.to_string()),
        )
        .await
    }

    pub async fn merge(&self, path: &str, body: Value) -> Resp {
        self.patch(path, "application/merge-patch+json", body).await
    }

    pub async fn delete(&self, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.http.delete(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        self.send(req).await
    }

    pub async fn watch(&self, path: &str) -> Watch {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        Watch {
            code: resp.status().as_u16(),
            resp,
            buf: Vec::new(),
        }
    }

    /// Create a configmap in `default` and return it.
    pub async fn cm(&self, name: &str, labels: Value) -> Value {
        let r = self
            .post(
                "/api/v1/namespaces/default/configmaps",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
            )
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
        r.body
    }

    /// Create a pod in `ns` (bound to `node` if not empty) and return it.
    pub async fn pod(&self, ns: &str, name: &str, node: &str) -> Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
        if !node.is_empty() {
            spec["nodeName"] = json!(node);
        }
        let r = self
            .post(
                &format!("/api/v1/namespaces/{ns}/pods"),
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}}, "spec": spec}),
            )
            .await;
        assert_eq!(r.code, 201, "{}", r.body);
        r.body
    }
}

pub struct Watch {
    pub code: u16,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or None at the end of the stream or after `wait` without one.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout(wait, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a watch event within 5s")
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let ev = self.next().await;
            if ev["type"] != "BOOKMARK" {
                return ev;
            }
        }
    }
}

pub fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn assert_status(r: &Resp, code: u16, reason: &str) {
    assert_eq!(r.code, code, "{}", r.body);
    assert_eq!(r.body["kind"], "Status", "{}", r.body);
    assert_eq!(r.body["apiVersion"], "v1");
    assert_eq!(r.body["status"], "Failure");
    assert_eq!(r.body["code"], code);
    assert_eq!(r.body["reason"], reason, "{}", r.body);
    assert!(r.body["message"].is_string());
}

pub fn quick_bookmarks() -> StandinOptions {
    StandinOptions {
        bookmark_interval: Duration::from_millis(200),
        ..StandinOptions::default()
    }
}
