//! component-base's JSON lines (kubelet `--logging-format=json`, zap with zapr):
//! `{"ts":1733349950419.495,"caller":"pod_workers/worker.rs:126","msg":"...","v":0,"pod":{"name":"web","namespace":"default"},"podUID":"...","err":"..."}`.
//!
//! `ts` is milliseconds since the epoch as a float (component-base's time encoder), `v` the line's
//! verbosity, errors are under `err`, and a `pod` given as `namespace/name` is written as the object
//! `KObj` marshals to.

use serde_json::{Map, Value as Json, json};

use super::{Line, Value, key};

fn value(name: &str, value: &Value) -> Json {
    match value {
        Value::Str(s) if name == "pod" => match s.split_once('/') {
            Some((namespace, pod)) if !pod.contains('/') => {
                json!({"name": pod, "namespace": namespace})
            }
            _ => Json::from(s.as_str()),
        },
        Value::Str(s) => Json::from(s.as_str()),
        Value::I64(n) => Json::from(*n),
        Value::U64(n) => Json::from(*n),
        Value::F64(n) => Json::from(*n),
        Value::Bool(b) => Json::from(*b),
    }
}

fn push(out: &mut String, name: &str, v: &Json) {
    out.push(',');
    out.push_str(&Json::from(name).to_string());
    out.push(':');
    out.push_str(&v.to_string());
}

pub(super) fn render(line: &Line<'_>) -> String {
    // Written field by field: zap's order (ts, caller, msg, v, then the keys), which a map would sort.
    let millis = line.time.timestamp().as_nanosecond() as f64 / 1e6;
    let mut out = String::with_capacity(160);
    out.push('{');
    out.push_str("\"ts\":");
    out.push_str(&Json::from(millis).to_string());
    push(&mut out, "caller", &Json::from(line.caller.as_str()));
    push(&mut out, "msg", &Json::from(line.message));
    push(&mut out, "v", &Json::from(line.v));
    let mut seen = Map::new();
    for (name, v) in &line.fields {
        let name = key(name);
        if matches!(name, "ts" | "caller" | "msg" | "v") || seen.contains_key(name) {
            continue;
        }
        seen.insert(name.to_string(), Json::Null);
        push(&mut out, name, &value(name, v));
    }
    out.push('}');
    out
}
