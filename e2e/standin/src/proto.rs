//! Decoding of the Kubernetes protobuf envelope for the few request bodies that kubectl's
//! typed clients send as `application/vnd.kubernetes.protobuf` (`kubectl create configmap`,
//! `secret`, `namespace`, `serviceaccount`, `token`, and `DeleteOptions`). Responses are JSON.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// The protobuf content type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\x00";

#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn bad(msg: &str) -> ApiError {
    ApiError::bad_request(format!("invalid protobuf body: {msg}"))
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| bad("truncated varint"))?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(bad("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let (num, wt) = (tag >> 3, tag & 7);
        let w = match wt {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 | 5 => {
                let n = if wt == 1 { 8 } else { 4 };
                if buf.get(pos..pos + n).is_none() {
                    return Err(bad("truncated fixed"));
                }
                pos += n;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| bad("length"))?;
                let end = pos.checked_add(len).ok_or_else(|| bad("length"))?;
                let bytes = buf.get(pos..end).ok_or_else(|| bad("truncated bytes"))?;
                pos = end;
                Wire::Bytes(bytes)
            }
            _ => return Err(bad("unsupported wire type")),
        };
        out.push((num, w));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Time,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
}

#[derive(Debug, Clone, Copy)]
struct F {
    num: u64,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, kind: Kind) -> F {
    F {
        num,
        name,
        kind,
        repeated: false,
    }
}

const fn rep(num: u64, name: &'static str, kind: Kind) -> F {
    F {
        num,
        name,
        kind,
        repeated: true,
    }
}

const OWNER_REF: &[F] = &[
    f(5, "apiVersion", Kind::Str),
    f(1, "kind", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(6, "controller", Kind::Bool),
    f(7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[F] = &[
    f(1, "name", Kind::Str),
    f(2, "generateName", Kind::Str),
    f(3, "namespace", Kind::Str),
    f(5, "uid", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "generation", Kind::Int),
    f(8, "creationTimestamp", Kind::Time),
    f(9, "deletionTimestamp", Kind::Time),
    f(10, "deletionGracePeriodSeconds", Kind::Int),
    f(11, "labels", Kind::MapStr),
    f(12, "annotations", Kind::MapStr),
    rep(13, "ownerReferences", Kind::Msg(OWNER_REF)),
    rep(14, "finalizers", Kind::Str),
];

const CONFIG_MAP: &[F] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(4, "immutable", Kind::Bool),
    f(2, "data", Kind::MapStr),
    f(3, "binaryData", Kind::MapBytes),
];

const SECRET: &[F] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(5, "immutable", Kind::Bool),
    f(2, "data", Kind::MapBytes),
    f(4, "stringData", Kind::MapStr),
    f(3, "type", Kind::Str),
];

const NAMESPACE: &[F] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(2, "spec", Kind::Msg(&[rep(1, "finalizers", Kind::Str)])),
    f(3, "status", Kind::Msg(&[f(1, "phase", Kind::Str)])),
];

const OBJECT_REF: &[F] = &[
    f(1, "kind", Kind::Str),
    f(2, "namespace", Kind::Str),
    f(3, "name", Kind::Str),
    f(4, "uid", Kind::Str),
    f(5, "apiVersion", Kind::Str),
    f(6, "resourceVersion", Kind::Str),
    f(7, "fieldPath", Kind::Str),
];

const SERVICE_ACCOUNT: &[F] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    rep(2, "secrets", Kind::Msg(OBJECT_REF)),
    rep(3, "imagePullSecrets", Kind::Msg(&[f(1, "name", Kind::Str)])),
    f(4, "automountServiceAccountToken", Kind::Bool),
];

const TOKEN_REQUEST: &[F] = &[
    f(1, "metadata", Kind::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Kind::Msg(&[
            rep(1, "audiences", Kind::Str),
            f(4, "expirationSeconds", Kind::Int),
            f(
                3,
                "boundObjectRef",
                Kind::Msg(&[
                    f(1, "kind", Kind::Str),
                    f(2, "apiVersion", Kind::Str),
                    f(3, "name", Kind::Str),
                    f(4, "uid", Kind::Str),
                ]),
            ),
        ]),
    ),
];

const DELETE_OPTIONS: &[F] = &[
    f(1, "gracePeriodSeconds", Kind::Int),
    f(
        2,
        "preconditions",
        Kind::Msg(&[f(1, "uid", Kind::Str), f(2, "resourceVersion", Kind::Str)]),
    ),
    f(3, "orphanDependents", Kind::Bool),
    f(4, "propagationPolicy", Kind::Str),
    rep(5, "dryRun", Kind::Str),
];

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("invalid UTF-8"))
}

fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut key = String::new();
    let mut value = json!("");
    for (num, w) in fields(b)? {
        match (num, w) {
            (1, Wire::Bytes(k)) => key = string(k)?,
            (2, Wire::Bytes(v)) if bytes_value => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(v));
            }
            (2, Wire::Bytes(v)) => value = json!(string(v)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(b: &[u8]) -> Result<Value, ApiError> {
    let mut secs = 0i64;
    for (num, w) in fields(b)? {
        if let (1, Wire::Varint(v)) = (num, w) {
            secs = v as i64;
        }
    }
    // Go's zero time (year 1) means "unset".
    if secs <= -62_135_596_800 {
        return Ok(Value::Null);
    }
    Ok(chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| json!(crate::util::fmt_time(t)))
        .unwrap_or(Value::Null))
}

fn decode_msg(b: &[u8], schema: &[F]) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (num, w) in fields(b)? {
        let Some(fd) = schema.iter().find(|fd| fd.num == num) else {
            continue;
        };
        let v = match (fd.kind, w) {
            (Kind::Str, Wire::Bytes(s)) => json!(string(s)?),
            (Kind::Int, Wire::Varint(v)) => json!(v as i64),
            (Kind::Bool, Wire::Varint(v)) => json!(v != 0),
            (Kind::Time, Wire::Bytes(s)) => time(s)?,
            (Kind::Msg(sub), Wire::Bytes(s)) => Value::Object(decode_msg(s, sub)?),
            (Kind::MapStr | Kind::MapBytes, Wire::Bytes(s)) => {
                let (k, v) = map_entry(s, matches!(fd.kind, Kind::MapBytes))?;
                let m = out
                    .entry(fd.name.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            _ => return Err(bad(&format!("unexpected wire type for field {}", fd.name))),
        };
        if fd.repeated {
            let arr = out
                .entry(fd.name.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(a) = arr.as_array_mut() {
                a.push(v);
            }
        } else {
            out.insert(fd.name.to_string(), v);
        }
    }
    Ok(out)
}

/// Decode a `k8s\0`-prefixed `runtime.Unknown` envelope into a JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s protobuf prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (num, w) in fields(rest)? {
        match (num, w) {
            (1, Wire::Bytes(tm)) => {
                for (n, w) in fields(tm)? {
                    match (n, w) {
                        (1, Wire::Bytes(s)) => api_version = string(s)?,
                        (2, Wire::Bytes(s)) => kind = string(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let schema = match kind.as_str() {
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Namespace" => NAMESPACE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "TokenRequest" => TOKEN_REQUEST,
        "DeleteOptions" => DELETE_OPTIONS,
        other => {
            return Err(ApiError::unsupported_media_type(&format!(
                "{CONTENT_TYPE} (the stand-in decodes protobuf only for ConfigMap, Secret, Namespace, ServiceAccount, TokenRequest and DeleteOptions, not {other})"
            )));
        }
    };
    let mut obj = decode_msg(raw, schema)?;
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((num << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = [
            ld(1, b"x"),
            ld(3, b"default"),
            ld(11, &[ld(1, b"a"), ld(2, b"b")].concat()),
        ]
        .concat();
        let cm = [ld(1, &meta), ld(2, &[ld(1, b"k"), ld(2, b"v")].concat())].concat();
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), ld(1, &tm), ld(2, &cm)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "x", "namespace": "default", "labels": {"a": "b"}},
                   "data": {"k": "v"}})
        );
        let tm = [ld(1, b"v1"), ld(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), ld(1, &tm)].concat();
        assert_eq!(decode(&body).unwrap_err().code, 415);
        assert_eq!(decode(b"{}").unwrap_err().code, 400);
    }
}
