//! klog's text lines: `I1204 22:05:50.419495   12345 pod_workers/worker.rs:126] "message" key="value" n=3`.

use std::fmt::Write;

use tracing::Level;

use super::{Line, Value, key};

/// klog's severity letter: no debug or trace in klog, those are verbosity-gated info lines.
fn severity(level: Level) -> char {
    match level {
        Level::ERROR => 'E',
        Level::WARN => 'W',
        _ => 'I',
    }
}

/// A string as klog quotes it (Go's `strconv.Quote`; Rust's escapes for the rare non-printable).
fn quoted(out: &mut String, s: &str) {
    let _ = write!(out, "{s:?}");
}

pub(super) fn render(line: &Line<'_>) -> String {
    let t = &line.time;
    let mut out = String::with_capacity(128);
    let _ = write!(
        out,
        "{}{:02}{:02} {:02}:{:02}:{:02}.{:06} {:>7} {}] ",
        severity(line.level),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.subsec_nanosecond() / 1000,
        line.pid,
        line.caller,
    );
    quoted(&mut out, line.message);
    for (name, value) in &line.fields {
        out.push(' ');
        out.push_str(key(name));
        out.push('=');
        match value {
            Value::Str(s) => quoted(&mut out, s),
            Value::I64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::U64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::F64(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => {
                let _ = write!(out, "{b}");
            }
        }
    }
    out
}
