use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Runs `f` with a subscriber at `-v=verbosity` writing `format`, and returns the lines written.
fn capture(format: Format, verbosity: u8, f: impl FnOnce()) -> Vec<String> {
    let (buffer, guard) = testing::capture(format, verbosity);
    f();
    drop(guard);
    buffer.lines()
}

/// Splits a klog text line into its header's parts and the rest after `] `, checking the
/// header's shape: `Lmmdd hh:mm:ss.uuuuuu PPPPPPP file:line] `.
fn klog_parts(line: &str) -> (char, u32, String, &str) {
    let (header, rest) = line.split_once("] ").expect("a klog header");
    let severity = header.chars().next().expect("a severity");
    let date = &header[1..5];
    let time = &header[6..21];
    assert!(date.chars().all(|c| c.is_ascii_digit()), "{line}");
    let month: u32 = date[..2].parse().expect("month");
    assert!((1..=12).contains(&month), "{line}");
    assert!(
        time.len() == 15
            && time.char_indices().all(|(i, c)| match i {
                2 | 5 => c == ':',
                8 => c == '.',
                _ => c.is_ascii_digit(),
            }),
        "time with microseconds in {line}"
    );
    // The pid, right-aligned in 7 columns, then the caller.
    let pid_field = &header[21..30];
    assert!(
        pid_field.starts_with(' ') && pid_field.ends_with(' '),
        "{line}"
    );
    let pid: u32 = pid_field.trim().parse().expect("pid");
    let caller = header[30..].to_string();
    (severity, pid, caller, rest)
}

#[test]
fn text_lines_are_klogs() {
    let mut at = 0;
    let lines = capture(Format::Text, 0, || {
        at = line!() + 1;
        tracing::info!(
            count = 3,
            ok = true,
            name = "a \"b\"",
            ratio = 0.5,
            "pod started"
        );
        tracing::warn!(path = %"/x y", "cannot read");
        tracing::error!(error = %std::io::Error::other("boom"), "sync failed");
        tracing::info!(
            reason = "Pulled",
            message = "Image is present",
            "Event occurred"
        );
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let (severity, pid, caller, rest) = klog_parts(&lines[0]);
    assert_eq!(severity, 'I');
    assert_eq!(pid, std::process::id());
    assert_eq!(caller, format!("logging/tests.rs:{at}"));
    assert_eq!(
        rest,
        r#""pod started" count=3 ok=true name="a \"b\"" ratio=0.5"#
    );
    let (severity, _, _, rest) = klog_parts(&lines[1]);
    assert_eq!((severity, rest), ('W', r#""cannot read" path="/x y""#));
    let (severity, _, _, rest) = klog_parts(&lines[2]);
    assert_eq!((severity, rest), ('E', r#""sync failed" err="boom""#));
    // A `message` field besides the message, as the event recorder logs them.
    assert_eq!(
        klog_parts(&lines[3]).3,
        r#""Event occurred" reason="Pulled" message="Image is present""#
    );
}

#[test]
fn json_lines_are_component_bases() {
    let before = jiff::Timestamp::now().as_millisecond() as f64;
    let mut at = 0;
    let lines = capture(Format::Json, 4, || {
        at = line!() + 1;
        tracing::info!(pod = "default/web", attempt = 2u32, "Removing container");
        tracing::error!(error = "boom", "sync failed");
        tracing::debug!(round = 1, "container garbage collection round");
    });
    let after = jiff::Timestamp::now().as_millisecond() as f64 + 1.0;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    // zap's order: ts, caller, msg, v, then the keys.
    assert!(lines[0].starts_with(r#"{"ts":"#), "{}", lines[0]);
    let rest = lines[0].split_once(',').expect("fields").1;
    assert_eq!(
        rest,
        format!(
            r#""caller":"logging/tests.rs:{at}","msg":"Removing container","v":0,"pod":{{"name":"web","namespace":"default"}},"attempt":2}}"#
        )
    );
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ts = parsed[0]["ts"].as_f64().expect("ts is a number");
    assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
    assert_eq!(parsed[1]["err"], "boom");
    assert_eq!(parsed[1]["v"], 0);
    assert_eq!(parsed[2]["v"], DEBUG_VERBOSITY);
    assert_eq!(parsed[2]["round"], 1);
}

#[test]
fn verbosity_gates_lines_as_klog() {
    let log = || {
        tracing::info!("v0");
        tracing::info!(v = 2, "v2");
        tracing::debug!("debug");
        tracing::trace!("trace");
        tracing::warn!("warn");
    };
    let messages = |verbosity| -> Vec<String> {
        capture(Format::Text, verbosity, log)
            .iter()
            .map(|l| klog_parts(l).3.to_string())
            .collect()
    };
    assert_eq!(messages(0), [r#""v0""#, r#""warn""#]);
    assert_eq!(messages(1), [r#""v0""#, r#""warn""#]);
    // The `v` field is the line's verbosity, not a key.
    assert_eq!(messages(2), [r#""v0""#, r#""v2""#, r#""warn""#]);
    assert_eq!(messages(3), [r#""v0""#, r#""v2""#, r#""warn""#]);
    assert_eq!(
        messages(4),
        [r#""v0""#, r#""v2""#, r#""debug""#, r#""warn""#]
    );
    assert_eq!(
        messages(5),
        [
            r#""v0""#,
            r#""v2""#,
            r#""debug""#,
            r#""trace""#,
            r#""warn""#
        ]
    );
    let json = capture(Format::Json, 2, log);
    let v: Vec<u64> = json
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["v"]
                .as_u64()
                .expect("v")
        })
        .collect();
    assert_eq!(v, [0, 2, 0]);
}

#[test]
fn lines_in_a_pod_span_carry_pod_and_pod_uid() {
    let lines = capture(Format::Text, 0, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        // As a pod worker runs: a task instrumented with the pod's span, logging without naming it.
        runtime.block_on(
            async {
                tracing::info!(container = "app", "Killing container with a grace period");
                tokio::task::yield_now().await;
                tracing::warn!(error = "gone", "probe failed");
            }
            .instrument(pod_span("kube-system", "etcd-node1", "0f1e-uid")),
        );
        tracing::info!("outside");
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(
        klog_parts(&lines[0]).3,
        r#""Killing container with a grace period" pod="kube-system/etcd-node1" podUID="0f1e-uid" container="app""#
    );
    assert_eq!(
        klog_parts(&lines[1]).3,
        r#""probe failed" pod="kube-system/etcd-node1" podUID="0f1e-uid" err="gone""#
    );
    assert_eq!(klog_parts(&lines[2]).3, r#""outside""#);
}

#[test]
fn pod_span_fields_show_even_when_only_errors_are_enabled() {
    let buffer = testing::Buffer::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("error"))
        .with(KlogLayer::with_writer(buffer.clone(), Format::Json, 0));
    tracing::subscriber::with_default(subscriber, || {
        let pod = k8s_openapi::api::core::v1::Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("web".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        pod_span_for(&pod).in_scope(|| tracing::error!("failed"));
    });
    let line: serde_json::Value = serde_json::from_str(&buffer.lines()[0]).expect("a JSON line");
    assert_eq!(
        line["pod"],
        serde_json::json!({"name": "web", "namespace": "default"})
    );
    assert_eq!(line["podUID"], "u-1");
}

#[test]
fn flags_win_over_the_file() {
    assert_eq!(effective(None, None, None, None), (Format::Text, 0));
    assert_eq!(
        effective(None, None, Some(Format::Json), Some(2)),
        (Format::Json, 2)
    );
    assert_eq!(
        effective(Some(Format::Text), Some(0), Some(Format::Json), Some(4)),
        (Format::Text, 0)
    );
    assert_eq!(
        effective(None, Some(3), Some(Format::Json), Some(4)),
        (Format::Json, 3)
    );
}

#[test]
fn format_reads_as_kubelet_spells_it() {
    let f: Format = serde_json::from_str(r#""json""#).expect("json");
    assert_eq!(f, Format::Json);
    assert_eq!(
        <Format as clap::ValueEnum>::from_str("text", false),
        Ok(Format::Text)
    );
    assert_eq!("json".parse(), Ok(Format::Json));
    assert_eq!(
        "yaml".parse::<Format>(),
        Err(UnknownFormat("yaml".to_string()))
    );
}
