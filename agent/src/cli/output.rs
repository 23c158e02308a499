//! Rendering: tables (comfy-table, borderless like crictl's tabwriter), JSON and YAML with
//! crictl's field names (the CRI protobuf JSON names: camelCase keys, enum values by name).

use std::io::Write as _;

use comfy_table::{CellAlignment, Table};
use serde::Serialize;
use serde_json::Value;

use super::CliError;

/// `-o`: how a listing is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Io {
            context: "writing to stdout".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A table with `headers` and `rows`, columns separated by three spaces, no borders.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
        column.set_cell_alignment(CellAlignment::Left);
    }
    let mut text: String = table
        .lines()
        .map(|line| line.trim_end().to_string() + "\n")
        .collect();
    if text.is_empty() {
        text.push('\n');
    }
    text
}

/// `value` in `format` (JSON or YAML), converted to crictl's names by [`crictl_names`].
pub fn document(format: Format, value: Value) -> Result<String, CliError> {
    match format {
        Format::Json | Format::Table => Ok(serde_json::to_string_pretty(&value)? + "\n"),
        Format::Yaml => serde_saphyr::to_string(&value).map_err(|e| CliError::Yaml(e.to_string())),
    }
}

/// A CRI message as crictl prints it: serialised with the derived serde names (the protobuf
/// field names, snake_case), then every object key turned to camelCase, as protobuf's JSON
/// mapping does.
pub fn crictl_names<T: Serialize>(message: &T) -> Result<Value, CliError> {
    Ok(camel_keys(serde_json::to_value(message)?))
}

fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (camel_case(&key), camel_keys(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

/// `pod_sandbox_id` → `podSandboxId`. Keys without underscores (labels, annotations, which
/// use dots and dashes) stay as they are.
pub fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces the integer at `key` of a JSON object by the enum's name (`state: 1` →
/// `"CONTAINER_RUNNING"`), as protobuf's JSON mapping prints enums.
pub fn enum_name(object: &mut Value, key: &str, name: impl Fn(i32) -> Option<&'static str>) {
    if let Some(slot) = object.get_mut(key)
        && let Some(n) = slot.as_i64().and_then(|n| i32::try_from(n).ok())
        && let Some(name) = name(n)
    {
        *slot = Value::String(name.to_string());
    }
}

/// The first 13 characters of an ID (crictl's short IDs), after any `sha256:`.
pub fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(13).collect()
}

/// A byte count as docker's `HumanSizeWithPrecision(size, 3)`: decimal units, three significant
/// digits (`12B`, `4.1kB`, `1.23MB`, `512MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    // Exact below 2^53, which sizes are; the precision is three digits anyway.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{value:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// How long ago `created_at` (CRI nanoseconds since the epoch) was, as crictl shows it (docker's
/// `HumanDuration` + " ago").
pub fn ago(created_at_nanos: i64, now: jiff::Timestamp) -> String {
    let created = jiff::Timestamp::from_nanosecond(i128::from(created_at_nanos))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let seconds = now.duration_since(created).as_secs().max(0);
    format!("{} ago", human_duration(seconds))
}

fn human_duration(seconds: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < MINUTE => format!("{s} seconds"),
        s if s < 2 * MINUTE => "About a minute".into(),
        s if s < HOUR => format!("{} minutes", s / MINUTE),
        s if s < 2 * HOUR => "About an hour".into(),
        s if s < 48 * HOUR => format!("{} hours", s / HOUR),
        s if s < 14 * DAY => format!("{} days", s / DAY),
        s if s < 90 * DAY => format!("{} weeks", s / (7 * DAY)),
        s if s < 730 * DAY => format!("{} months", s / (30 * DAY)),
        s => format!("{} years", s / (365 * DAY)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_three_significant_digits() {
        let cases = [
            (0, "0B"),
            (12, "12B"),
            (999, "999B"),
            (1000, "1kB"),
            (4_100, "4.1kB"),
            (1_234_567, "1.23MB"),
            (12_345_678, "12.3MB"),
            (512_000_000, "512MB"),
            (2_000_000_000, "2GB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human_size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn durations_read_as_crictl_does() {
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        let at = |ago: i64| (1_000_000 - ago) * 1_000_000_000;
        assert_eq!(super::ago(at(0), now), "Less than a second ago");
        assert_eq!(super::ago(at(1), now), "1 second ago");
        assert_eq!(super::ago(at(42), now), "42 seconds ago");
        assert_eq!(super::ago(at(90), now), "About a minute ago");
        assert_eq!(super::ago(at(600), now), "10 minutes ago");
        assert_eq!(super::ago(at(5000), now), "About an hour ago");
        assert_eq!(super::ago(at(5 * 3600), now), "5 hours ago");
        assert_eq!(super::ago(at(3 * 86400), now), "3 days ago");
        // A clock that is behind the runtime's does not print negative durations.
        assert_eq!(super::ago(at(-5), now), "Less than a second ago");
    }

    #[test]
    fn keys_become_camel_case_and_enums_names() {
        let mut value = camel_keys(serde_json::json!({
            "pod_sandbox_id": "abc",
            "state": 1,
            "labels": {"io.kubernetes.pod.name": "x"},
            "metadata": {"name": "n", "attempt": 0},
            "items": [{"created_at": 5}]
        }));
        enum_name(&mut value, "state", |n| {
            (n == 1).then_some("CONTAINER_RUNNING")
        });
        assert_eq!(
            value,
            serde_json::json!({
                "podSandboxId": "abc",
                "state": "CONTAINER_RUNNING",
                "labels": {"io.kubernetes.pod.name": "x"},
                "metadata": {"name": "n", "attempt": 0},
                "items": [{"createdAt": 5}]
            })
        );
    }

    #[test]
    fn tables_are_aligned_without_borders() {
        let text = table(
            &["POD ID", "NAME"],
            vec![
                vec!["0123456789abc".into(), "web".into()],
                vec!["ff".into(), "database".into()],
            ],
        );
        assert_eq!(
            text,
            "POD ID          NAME\n0123456789abc   web\nff              database\n"
        );
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789abc");
    }
}
