//! The agent's own log, in kubelet's formats: klog's text lines (`--logging-format=text`, the
//! default) or component-base's JSON lines (`--logging-format=json`), so that operators' habits and
//! log tooling built for kubelet work on this agent too.
//!
//! It is one [`tracing_subscriber::Layer`] ([`KlogLayer`]) behind an [`EnvFilter`] that can be
//! reloaded: logging starts from the flags before the configuration file is read (so errors reading
//! it are logged), and [`Handle::reconfigure`] applies the file's `logging` section afterwards when no
//! flag set it (flags win over the file, as in kubelet).
//!
//! # Verbosity (`-v`)
//!
//! klog has no levels below info: a line is an info line written only at verbosity `V(n)` or more.
//! tracing's levels map onto it this way:
//!
//! | tracing            | klog severity | verbosity of the line | shown from |
//! |--------------------|---------------|-----------------------|------------|
//! | `error!`           | `E`           | 0                     | `-v=0`     |
//! | `warn!`            | `W`           | 0                     | `-v=0`     |
//! | `info!`            | `I`           | 0, or its `v` field   | `-v=0`, or `-v=v` |
//! | `debug!`           | `I`           | 4                     | `-v=4`     |
//! | `trace!`           | `I`           | 5                     | `-v=5`     |
//!
//! An `info!` event may carry an integer field `v` (`tracing::info!(v = 2, ...)`): the line then has
//! klog's `V(v)`, it is written only at `-v=v` or more and the JSON `v` field says so; the field itself
//! is not printed. That is how the lines kubelet logs at `V(2)` (a pod's lifecycle: "SyncLoop ADD",
//! "Killing container with a grace period", ...) are shown at `-v=2`, kubelet's usual production
//! setting, and not at `-v=0`. So `-v=0..3` enables tracing's `info`, `-v=4` `debug`, `-v=5` and
//! more `trace` (the HTTP/2 stack's own crates stay at `info`).
//!
//! `RUST_LOG` still overrides `-v`: when it is set, its directives decide alone (the `v` fields do not
//! hide anything), and the file's verbosity is ignored.
//!
//! # Lines about a pod
//!
//! Every line about a pod carries kubelet's keys `pod="namespace/name"` (klog's `KObj` form) and
//! `podUID="..."`. Pod-scoped work runs inside the span [`pod_span`] returns; the layer prints the
//! fields of every span an event is in (outermost first, then the event's own), so a line logged in a
//! pod worker carries them without naming them. A field of the event wins over a span's of the same
//! name.
//!
//! # Differences from klog
//!
//! The caller is `dir/file.rs:line` (the file's last two path components, as zap's short caller)
//! in both formats, since a bare `mod.rs` would say little. tracing's conventional `error` field is
//! written as klog's `err`. Values are written as klog writes strings (quoted, escaped) unless they
//! are numbers or booleans; multi-line values are escaped on one line rather than klog's `<` block.

mod json;
mod text;

use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// kubelet's `--logging-format` (`logging.format` in the configuration file).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// klog's text lines.
    #[default]
    Text,
    /// component-base's JSON lines.
    Json,
}

impl Format {
    fn as_u8(self) -> u8 {
        match self {
            Format::Text => 0,
            Format::Json => 1,
        }
    }

    fn from_u8(v: u8) -> Self {
        if v == 1 { Format::Json } else { Format::Text }
    }
}

/// A `--logging-format` / `logging.format` value that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown logging format {0:?}: expected \"text\" or \"json\"")]
pub struct UnknownFormat(pub String);

impl std::str::FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(UnknownFormat(s.to_string())),
        }
    }
}

/// The verbosity of debug lines (klog's `V(4)`, kubelet's "debug level").
pub const DEBUG_VERBOSITY: u8 = 4;
/// The verbosity of trace lines.
pub const TRACE_VERBOSITY: u8 = 5;

/// The tracing level `-v=verbosity` enables (see the module documentation).
pub fn level_for(verbosity: u8) -> Level {
    match verbosity {
        0..DEBUG_VERBOSITY => Level::INFO,
        DEBUG_VERBOSITY => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// The filter for `-v=verbosity` when `RUST_LOG` is not set.
pub fn filter_for(verbosity: u8) -> EnvFilter {
    let level = level_for(verbosity).as_str().to_ascii_lowercase();
    EnvFilter::new(format!("{level},h2=info,hyper=info,tower=info"))
}

/// The format and verbosity in effect: a flag's value wins over the configuration file's, and klog's
/// defaults (text, 0) apply when neither sets one.
pub fn effective(
    flag_format: Option<Format>,
    flag_verbosity: Option<u8>,
    file_format: Option<Format>,
    file_verbosity: Option<u8>,
) -> (Format, u8) {
    (
        flag_format.or(file_format).unwrap_or_default(),
        flag_verbosity.or(file_verbosity).unwrap_or(0),
    )
}

/// The span of work about one pod: lines logged inside it carry `pod="namespace/name"` and
/// `podUID="..."`.
///
/// It is an `ERROR`-level span so that every enabled level's lines inside it see it: a span the filter
/// disables would drop the pod's fields from the lines that are written.
pub fn pod_span(namespace: &str, name: &str, uid: &str) -> tracing::Span {
    tracing::error_span!("pod", pod = %format_args!("{namespace}/{name}"), podUID = uid)
}

/// [`pod_span`] for a pod object (namespace `default` when it has none, as the sources key it).
pub fn pod_span_for(pod: &k8s_openapi::api::core::v1::Pod) -> tracing::Span {
    pod_span(
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// Why logging could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a global logger is already installed: {0}")]
    Init(#[from] tracing_subscriber::util::TryInitError),
    #[error("reloading the log filter: {0}")]
    Reload(#[from] reload::Error),
}

/// What the layer reads on each event; changed in place by [`Handle::reconfigure`].
#[derive(Debug)]
struct Settings {
    format: AtomicU8,
    verbosity: AtomicU8,
    /// Whether `v` fields hide lines above the verbosity (not when `RUST_LOG` decides).
    gate_v: AtomicBool,
}

impl Settings {
    fn new(format: Format, verbosity: u8, gate_v: bool) -> Self {
        Self {
            format: AtomicU8::new(format.as_u8()),
            verbosity: AtomicU8::new(verbosity),
            gate_v: AtomicBool::new(gate_v),
        }
    }
}

/// The installed logger, to apply the configuration file's `logging` section once it is read.
pub struct Handle {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    settings: Arc<Settings>,
    from_env: bool,
}

impl Handle {
    /// Switches to `format` and `verbosity` (the latter only when `RUST_LOG` is not set).
    pub fn reconfigure(&self, format: Format, verbosity: u8) -> Result<(), Error> {
        self.settings
            .format
            .store(format.as_u8(), Ordering::Relaxed);
        if !self.from_env && self.settings.verbosity.swap(verbosity, Ordering::Relaxed) != verbosity
        {
            self.filter.reload(filter_for(verbosity))?;
        }
        Ok(())
    }
}

/// Installs the agent's logger on stderr: `format`, `-v=verbosity` unless `RUST_LOG` is set.
pub fn init(format: Format, verbosity: u8) -> Result<Handle, Error> {
    let (filter, from_env) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, true),
        Err(_) => (filter_for(verbosity), false),
    };
    let settings = Arc::new(Settings::new(format, verbosity, !from_env));
    let (filter, reload) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(KlogLayer::new(std::io::stderr, settings.clone()))
        .try_init()?;
    Ok(Handle {
        filter: reload,
        settings,
        from_env,
    })
}

/// A field's value as recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// The fields of a span, stored in its extensions.
struct SpanFields(Vec<(&'static str, Value)>);

/// Collects an event's or a span's fields.
#[derive(Default)]
struct Collector {
    message: Option<String>,
    v: Option<u8>,
    fields: Vec<(&'static str, Value)>,
    /// The source of a `log` record bridged into tracing (its metadata has none).
    log_file: Option<String>,
    log_line: Option<u64>,
}

impl Collector {
    fn push(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name.starts_with("log.") {
            // Metadata of `log` records bridged into tracing.
            match (name, value) {
                ("log.file", Value::Str(file)) => self.log_file = Some(file),
                ("log.line", Value::U64(line)) => self.log_line = Some(line),
                _ => {}
            }
            return;
        }
        if let Some(existing) = self.fields.iter_mut().find(|(n, _)| *n == name) {
            existing.1 = value;
        } else {
            self.fields.push((name, value));
        }
    }

    /// The event's message is the first `message` recorded (the macro's format string comes before
    /// the fields); a later one is a field of that name (`message = %text, "Event occurred"`).
    fn set_message(&mut self, field: &Field, message: String) {
        if self.message.is_some() {
            self.push(field, Value::Str(message));
        } else {
            self.message = Some(message);
        }
    }

    fn set_v(&mut self, field: &Field, v: u64) -> bool {
        if field.name() == "v" {
            self.v = Some(u8::try_from(v).unwrap_or(u8::MAX));
            true
        } else {
            false
        }
    }
}

impl Visit for Collector {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.set_message(field, format!("{value:?}"));
        } else {
            self.push(field, Value::Str(format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.set_message(field, value.to_string());
        } else {
            self.push(field, Value::Str(value.to_string()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if !(value >= 0 && self.set_v(field, value.unsigned_abs())) {
            self.push(field, Value::I64(value));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if !self.set_v(field, value) {
            self.push(field, Value::U64(value));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::Str(value.to_string()));
    }
}

/// One line to write, whatever the format.
pub(crate) struct Line<'a> {
    pub level: Level,
    pub time: jiff::Zoned,
    pub pid: u32,
    /// `dir/file.rs:line`.
    pub caller: String,
    pub message: &'a str,
    /// klog's verbosity of the line.
    pub v: u8,
    /// Span fields, outermost first, then the event's; one per name.
    pub fields: Vec<(&'a str, &'a Value)>,
}

/// The field name as kubelet writes it.
pub(crate) fn key(name: &str) -> &str {
    if name == "error" { "err" } else { name }
}

/// `dir/file.rs:line` of an event (a bridged `log` record's own source; the target when the file
/// is unknown).
fn caller(meta: &tracing::Metadata<'_>, collector: &Collector) -> String {
    let file = meta.file().or(collector.log_file.as_deref());
    let line = meta.line().map(u64::from).or(collector.log_line);
    match file {
        Some(file) => {
            let mut parts = file.rsplit(['/', '\\']);
            let base = parts.next().unwrap_or(file);
            let short = match parts.next() {
                Some(dir) => format!("{dir}/{base}"),
                None => base.to_string(),
            };
            format!("{short}:{}", line.unwrap_or(0))
        }
        None => format!("{}:0", meta.target()),
    }
}

/// The layer that writes kubelet's log lines through `make_writer`.
pub struct KlogLayer<W> {
    make_writer: W,
    settings: Arc<Settings>,
    zone: jiff::tz::TimeZone,
}

impl<W> KlogLayer<W> {
    fn new(make_writer: W, settings: Arc<Settings>) -> Self {
        Self {
            make_writer,
            settings,
            zone: jiff::tz::TimeZone::system(),
        }
    }

    /// A layer with fixed settings, `v` fields gating lines above `verbosity` (for tests).
    pub fn with_writer(make_writer: W, format: Format, verbosity: u8) -> Self {
        Self::new(
            make_writer,
            Arc::new(Settings::new(format, verbosity, true)),
        )
    }
}

impl<S, W> tracing_subscriber::Layer<S> for KlogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut collector = Collector::default();
        attrs.record(&mut collector);
        span.extensions_mut().insert(SpanFields(collector.fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() else {
            return;
        };
        let mut collector = Collector {
            fields: std::mem::take(fields),
            ..Collector::default()
        };
        values.record(&mut collector);
        *fields = collector.fields;
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut collector = Collector::default();
        event.record(&mut collector);
        let level = *meta.level();
        let v = match level {
            Level::ERROR | Level::WARN => 0,
            Level::INFO => collector.v.unwrap_or(0),
            Level::DEBUG => collector.v.unwrap_or(DEBUG_VERBOSITY),
            _ => collector.v.unwrap_or(TRACE_VERBOSITY),
        };
        if self.settings.gate_v.load(Ordering::Relaxed)
            && v > self.settings.verbosity.load(Ordering::Relaxed)
        {
            return;
        }
        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|s| s.extensions()).collect();
        let mut fields: Vec<(&str, &Value)> = Vec::new();
        let span_fields = extensions
            .iter()
            .filter_map(|e| e.get::<SpanFields>())
            .flat_map(|SpanFields(f)| f.iter());
        for (name, value) in span_fields.chain(collector.fields.iter()) {
            if let Some(existing) = fields.iter_mut().find(|(n, _)| n == name) {
                existing.1 = value;
            } else {
                fields.push((name, value));
            }
        }
        let line = Line {
            level,
            time: jiff::Timestamp::now().to_zoned(self.zone.clone()),
            pid: std::process::id(),
            caller: caller(meta, &collector),
            message: collector.message.as_deref().unwrap_or_default(),
            v,
            fields,
        };
        let mut text = match Format::from_u8(self.settings.format.load(Ordering::Relaxed)) {
            Format::Text => text::render(&line),
            Format::Json => json::render(&line),
        };
        text.push('\n');
        // A log line that cannot be written has nowhere else to go.
        let _ = self
            .make_writer
            .make_writer_for(meta)
            .write_all(text.as_bytes());
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
