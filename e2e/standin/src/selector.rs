//! Label and field selectors, parsed like `k8s.io/apimachinery`.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::resources::{Behaviour, ResourceDef};

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: LabelOp,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Not,
    NotEq,
    Eq,
    DoubleEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
    In,
    NotIn,
}

fn lex(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('!', Some('=')) => (Some(Tok::NotEq), 2),
            ('!', _) => (Some(Tok::Not), 1),
            ('=', Some('=')) => (Some(Tok::DoubleEq), 2),
            ('=', _) => (Some(Tok::Eq), 1),
            ('>', _) => (Some(Tok::Gt), 1),
            ('<', _) => (Some(Tok::Lt), 1),
            ('(', _) => (Some(Tok::Open), 1),
            (')', _) => (Some(Tok::Close), 1),
            (',', _) => (Some(Tok::Comma), 1),
            _ => (None, 0),
        };
        if let Some(t) = tok {
            out.push(t);
            i += len;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !"!=><(),".contains(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        out.push(match word.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident(word),
        });
    }
    out
}

fn bad(sel: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (in label selector {sel:?})"
    ))
}

fn check_key(sel: &str, key: &str) -> Result<(), ApiError> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(ok_char)
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(bad(sel, &format!("invalid label key {key:?}")));
    }
    Ok(())
}

fn check_value(sel: &str, v: &str) -> Result<(), ApiError> {
    if !is_label_value(v) {
        return Err(bad(sel, &format!("invalid label value: {v:?}")));
    }
    Ok(())
}

/// Whether `v` is a syntactically valid label value.
pub fn is_label_value(v: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(ok_char)
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

impl LabelSelector {
    /// Parse the `labelSelector` query syntax.
    pub fn parse(sel: &str) -> Result<Self, ApiError> {
        let toks = lex(sel);
        let mut reqs = Vec::new();
        let mut i = 0;
        if toks.is_empty() {
            return Ok(Self::default());
        }
        loop {
            let (req, next) = Self::requirement(sel, &toks, i)?;
            reqs.push(req);
            i = next;
            match toks.get(i) {
                None => break,
                Some(Tok::Comma) => {
                    i += 1;
                    if i >= toks.len() {
                        return Err(bad(sel, "found '', expected: identifier"));
                    }
                }
                Some(t) => return Err(bad(sel, &format!("found {t:?}, expected: ','"))),
            }
        }
        Ok(Self { reqs })
    }

    fn requirement(
        sel: &str,
        toks: &[Tok],
        mut i: usize,
    ) -> Result<(Requirement, usize), ApiError> {
        if toks.get(i) == Some(&Tok::Not) {
            let Some(Tok::Ident(key)) = toks.get(i + 1) else {
                return Err(bad(sel, "expected identifier after '!'"));
            };
            check_key(sel, key)?;
            return Ok((
                Requirement {
                    key: key.clone(),
                    op: LabelOp::NotExists,
                },
                i + 2,
            ));
        }
        let Some(Tok::Ident(key)) = toks.get(i) else {
            return Err(bad(sel, "expected identifier"));
        };
        check_key(sel, key)?;
        i += 1;
        let op_tok = match toks.get(i) {
            None | Some(Tok::Comma) => {
                return Ok((
                    Requirement {
                        key: key.clone(),
                        op: LabelOp::Exists,
                    },
                    i,
                ));
            }
            Some(t) => t.clone(),
        };
        i += 1;
        let single = |i: usize| -> (String, usize) {
            match toks.get(i) {
                Some(Tok::Ident(v)) => (v.clone(), i + 1),
                _ => (String::new(), i),
            }
        };
        let op = match op_tok {
            Tok::Eq | Tok::DoubleEq => {
                let (v, n) = single(i);
                check_value(sel, &v)?;
                i = n;
                LabelOp::Eq(v)
            }
            Tok::NotEq => {
                let (v, n) = single(i);
                check_value(sel, &v)?;
                i = n;
                LabelOp::NotEq(v)
            }
            Tok::Gt | Tok::Lt => {
                let (v, n) = single(i);
                let num: i64 = v.parse().map_err(|_| {
                    bad(
                        sel,
                        &format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"),
                    )
                })?;
                i = n;
                if op_tok == Tok::Gt {
                    LabelOp::Gt(num)
                } else {
                    LabelOp::Lt(num)
                }
            }
            Tok::In | Tok::NotIn => {
                if toks.get(i) != Some(&Tok::Open) {
                    return Err(bad(sel, "expected '('"));
                }
                i += 1;
                let mut vals = Vec::new();
                loop {
                    match toks.get(i) {
                        Some(Tok::Ident(v)) => {
                            check_value(sel, v)?;
                            vals.push(v.clone());
                            i += 1;
                        }
                        Some(Tok::Comma) | Some(Tok::Close) => vals.push(String::new()),
                        _ => return Err(bad(sel, "expected value or ')'")),
                    }
                    match toks.get(i) {
                        Some(Tok::Comma) => i += 1,
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        _ => return Err(bad(sel, "expected ',' or ')'")),
                    }
                }
                if op_tok == Tok::In {
                    LabelOp::In(vals)
                } else {
                    LabelOp::NotIn(vals)
                }
            }
            other => return Err(bad(sel, &format!("unexpected {other:?}"))),
        };
        Ok((
            Requirement {
                key: key.clone(),
                op,
            },
            i,
        ))
    }

    /// Whether this selector selects nothing in particular (matches all).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match &r.op {
                LabelOp::Eq(want) => v == Some(want.as_str()),
                LabelOp::NotEq(want) => v != Some(want.as_str()),
                LabelOp::In(set) => v.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::NotIn(set) => !v.is_some_and(|v| set.iter().any(|s| s == v)),
                LabelOp::Exists => v.is_some(),
                LabelOp::NotExists => v.is_none(),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    /// Whether an object matches, reading its labels.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
    }
}

/// A parsed field selector: a conjunction of `field=value` / `field!=value` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence: \\{e}")),
                None => return Err("unterminated escape sequence".into()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Find the first unescaped operator in a term: returns (lhs, is_equal, rhs).
fn split_term(term: &str) -> Option<(String, bool, String)> {
    let mut iter = term.char_indices();
    while let Some((i, c)) = iter.next() {
        if c == '\\' {
            iter.next();
            continue;
        }
        for (op, eq) in [("!=", false), ("==", true), ("=", true)] {
            if let Some(rest) = term[i..].strip_prefix(op) {
                return Some((term[..i].to_string(), eq, rest.to_string()));
            }
        }
    }
    None
}

impl FieldSelector {
    /// Parse the `fieldSelector` query syntax and check fields against the resource.
    pub fn parse(sel: &str, res: &ResourceDef) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self::default());
        }
        for term in split_unescaped(sel, ',') {
            let Some((field, eq, value)) = split_term(&term) else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{sel}'; can't understand '{term}'"
                )));
            };
            let field = field.trim().to_string();
            let value = unescape(&value)
                .map_err(|e| ApiError::bad_request(format!("invalid selector: '{sel}'; {e}")))?;
            let supported = field == "metadata.name"
                || (res.namespaced && field == "metadata.namespace")
                || res.fields.contains(&field.as_str());
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push((field, eq, value));
        }
        Ok(Self { terms })
    }

    /// Whether this selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether an object matches.
    pub fn matches(&self, res: &ResourceDef, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|(f, eq, v)| (field_value(res, obj, f) == *v) == *eq)
    }

    /// If the selector pins `metadata.name` to one value, that value.
    pub fn single_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The value of a selectable field of an object, as the real server computes it.
pub fn field_value(res: &ResourceDef, obj: &Value, field: &str) -> String {
    match (res.behaviour, field) {
        (_, "metadata.name") => str_at(obj, "/metadata/name").to_string(),
        (_, "metadata.namespace") => str_at(obj, "/metadata/namespace").to_string(),
        (Behaviour::Pod, "spec.hostNetwork") | (Behaviour::Node, "spec.unschedulable") => {
            let ptr = format!("/{}", field.replace('.', "/"));
            obj.pointer(&ptr)
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        }
        (Behaviour::Pod, "status.podIP") => {
            let first = obj
                .pointer("/status/podIPs/0/ip")
                .and_then(Value::as_str)
                .unwrap_or_else(|| str_at(obj, "/status/podIP"));
            first.to_string()
        }
        (Behaviour::CoreEvent, "source") => str_at(obj, "/source/component").to_string(),
        (Behaviour::CoreEvent, "reportingComponent") => {
            str_at(obj, "/reportingComponent").to_string()
        }
        (Behaviour::Event, f)
            if f.starts_with("involvedObject.") || f.starts_with("regarding.") =>
        {
            let sub = f.split_once('.').map_or("", |(_, s)| s);
            str_at(obj, &format!("/regarding/{sub}")).to_string()
        }
        (Behaviour::Event, "reportingController" | "reportingComponent") => {
            str_at(obj, "/reportingController").to_string()
        }
        (_, f) => {
            let ptr = format!("/{}", f.replace('.', "/"));
            match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{RESOURCES, by_behaviour};
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn label_ops() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"));
        assert!(m("app in (web, db)"));
        assert!(!m("app in (db)"));
        assert!(m("app notin (db)"));
        assert!(m("missing notin (db)"));
        assert!(!m("app notin (web)"));
        assert!(m("app"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app=web,tier=front"));
        assert!(!m("app=web,tier=back"));
        assert!(m("app in (web,db),tier"));
        assert!(m("n>4"));
        assert!(!m("n<4"));
        assert!(m("example.com/x!=y"));
    }

    #[test]
    fn label_parse_errors() {
        for s in [
            "app in web",
            "app=web,",
            "=x",
            "app in (web",
            "a b",
            "n>x",
            "!",
        ] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let pods = &RESOURCES[by_behaviour(Behaviour::Pod)];
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]}
        });
        let m = |s: &str| FieldSelector::parse(s, pods).unwrap().matches(pods, &pod);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.name==p,metadata.namespace=ns"));
        assert!(!m("metadata.name!=p"));
        assert!(m("spec.nodeName=n1"));
        assert!(!m("spec.nodeName="));
        assert!(m("status.phase!=Pending"));
        assert!(m("status.podIP=10.0.0.1"));
        assert!(m("spec.hostNetwork=false"));
        let e = FieldSelector::parse("spec.foo=x", pods).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("field label not supported"));
        let nodes = &RESOURCES[by_behaviour(Behaviour::Node)];
        assert!(FieldSelector::parse("metadata.namespace=x", nodes).is_err());
        let sel = FieldSelector::parse(r"metadata.name=a\,b", pods).unwrap();
        assert_eq!(sel.single_name(), Some("a,b"));
    }

    #[test]
    fn event_fields() {
        let ev = &RESOURCES[by_behaviour(Behaviour::CoreEvent)];
        let e = json!({"involvedObject": {"kind": "Pod", "name": "p"}, "source": {"component": "kubelet"}});
        let m = |s: &str| FieldSelector::parse(s, ev).unwrap().matches(ev, &e);
        assert!(m("involvedObject.kind=Pod,involvedObject.name=p"));
        assert!(m("source=kubelet"));
        assert!(!m("involvedObject.name=q"));
        let ev2 = &RESOURCES[by_behaviour(Behaviour::Event)];
        let e2 = json!({"regarding": {"kind": "Pod", "name": "p"}});
        assert!(
            FieldSelector::parse("regarding.name=p", ev2)
                .unwrap()
                .matches(ev2, &e2)
        );
        assert!(
            FieldSelector::parse("involvedObject.name=p", ev2)
                .unwrap()
                .matches(ev2, &e2)
        );
    }
}
