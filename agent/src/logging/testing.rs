//! For unit tests across the crate: the agent's log lines, captured on the current thread.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use super::{Format, KlogLayer, filter_for};

/// The lines written so far, shared with the layer.
#[derive(Clone, Default)]
pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    pub(crate) fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process-wide subscriber of the unit tests: it records nothing and asks about every callsite
/// each time (`Interest::sometimes`). tracing caches a callsite's interest when it is first hit;
/// without a global subscriber a callsite first hit on another test's thread, while this thread's
/// capture was being installed, could be cached as "never" and its lines lost to the capture.
struct AskEveryTime;

impl tracing::Subscriber for AskEveryTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Captures this thread's log lines (a current-thread runtime's tasks included) at `-v=verbosity`
/// in `format` until the guard is dropped.
pub(crate) fn capture(format: Format, verbosity: u8) -> (Buffer, DefaultGuard) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    // Another test may have installed one already: then that one answers for the process.
    GLOBAL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(AskEveryTime);
    });
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::registry()
        .with(filter_for(verbosity))
        .with(KlogLayer::with_writer(buffer.clone(), format, verbosity));
    (buffer, tracing::subscriber::set_default(subscriber))
}
