//! One probe's state machine, after kubelet's probe worker (`worker.go`): the cached result for
//! the current container instance, when to probe, and the success/failure thresholds.

use super::spec::ProbeType;

/// A probe's cached result (kubelet's `results.Result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Unknown,
    Success,
    Failure,
}

impl ProbeResult {
    /// The result a new container instance starts with: readiness is failed until the first
    /// success, liveness succeeded until proven otherwise, startup unknown until it succeeds.
    pub fn initial(probe_type: ProbeType) -> Self {
        match probe_type {
            ProbeType::Readiness => ProbeResult::Failure,
            ProbeType::Liveness => ProbeResult::Success,
            ProbeType::Startup => ProbeResult::Unknown,
        }
    }
}

/// What a probe worker knows about its container when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub running: bool,
    /// Whole seconds since the container started (`i64::MAX` when the start is unknown).
    pub seconds_running: i64,
    /// The startup probe succeeded, or there is none.
    pub container_started: bool,
    /// The pod is being deleted.
    pub deleting: bool,
}

impl Gate {
    /// Whole seconds between a start and now, both in nanoseconds since the epoch, truncated as
    /// kubelet does (`int32(time.Since(startedAt).Seconds())`).
    pub fn seconds_between(started_at_ns: i64, now_ns: i64) -> i64 {
        if started_at_ns <= 0 {
            return i64::MAX;
        }
        now_ns.saturating_sub(started_at_ns) / 1_000_000_000
    }
}

/// What a worker does on its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to probe now.
    Wait,
    /// Run the probe.
    Probe,
    /// The pod is being deleted: record success (a quiet shutdown) and stop this worker.
    Finish,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    probe_type: ProbeType,
    container_id: Option<String>,
    result: ProbeResult,
    /// The last raw probe result and how many times in a row it came.
    last: Option<ProbeResult>,
    run: u32,
    /// A liveness failure or a decided startup probe: no probing until a new container.
    on_hold: bool,
    /// The probe output that set a `Failure` result.
    message: Option<String>,
}

impl ProbeState {
    pub fn new(probe_type: ProbeType) -> Self {
        Self {
            probe_type,
            container_id: None,
            result: ProbeResult::initial(probe_type),
            last: None,
            run: 0,
            on_hold: false,
            message: None,
        }
    }

    pub fn probe_type(&self) -> ProbeType {
        self.probe_type
    }

    /// The container instance the result is about.
    pub fn container_id(&self) -> Option<&str> {
        self.container_id.as_deref()
    }

    /// The result for this container instance, `None` when the state is about another one.
    pub fn result_for(&self, container_id: &str) -> Option<ProbeResult> {
        (self.container_id.as_deref() == Some(container_id)).then_some(self.result)
    }

    /// The output of the probe that failed the container (after the failure threshold).
    pub fn failure_message(&self) -> Option<&str> {
        match self.result {
            ProbeResult::Failure => self.message.as_deref(),
            _ => None,
        }
    }

    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// Follows the container instance. A new ID resets everything to the initial result
    /// (initialDelaySeconds counts again from the new container's start); a container that is not
    /// running counts as failed unless probing is on hold. Returns whether the result changed.
    pub fn observe(&mut self, container_id: &str, running: bool) -> bool {
        let before = (self.container_id.clone(), self.result);
        if self.container_id.as_deref() != Some(container_id) {
            *self = Self::new(self.probe_type);
            self.container_id = Some(container_id.to_string());
        }
        if !running && !self.on_hold {
            self.result = ProbeResult::Failure;
            self.message = None;
        }
        before.1 != self.result && before.0.is_some()
    }

    /// Whether to probe now, in kubelet's order of checks.
    pub fn decide(&self, gate: &Gate, initial_delay_seconds: i64) -> Decision {
        if self.container_id.is_none() || self.on_hold || !gate.running {
            return Decision::Wait;
        }
        if gate.deleting && matches!(self.probe_type, ProbeType::Liveness | ProbeType::Startup) {
            return Decision::Finish;
        }
        if gate.seconds_running < initial_delay_seconds {
            return Decision::Wait;
        }
        let startup = self.probe_type == ProbeType::Startup;
        // A started container is not probed for startup any more; the other probes wait for it.
        if gate.container_started == startup {
            return Decision::Wait;
        }
        Decision::Probe
    }

    /// Records a quiet shutdown (pod deletion): the result becomes success. Returns whether it
    /// changed.
    pub fn finish(&mut self) -> bool {
        let changed = self.result != ProbeResult::Success;
        self.result = ProbeResult::Success;
        self.message = None;
        changed
    }

    /// Records one probe's result (`Success` or `Failure`); the cached result flips only after
    /// `success_threshold` / `failure_threshold` identical results in a row. A liveness failure or
    /// a decided startup probe puts probing on hold until the next container. Returns whether the
    /// cached result changed.
    pub fn record(
        &mut self,
        result: ProbeResult,
        message: Option<String>,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> bool {
        if self.last == Some(result) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(result);
            self.run = 1;
        }
        let below = match result {
            ProbeResult::Failure => self.run < failure_threshold,
            ProbeResult::Success => self.run < success_threshold,
            ProbeResult::Unknown => true,
        };
        if below {
            return false;
        }
        let changed = self.result != result;
        self.result = result;
        self.message = match result {
            ProbeResult::Failure => message,
            _ => None,
        };
        if (self.probe_type == ProbeType::Liveness && result == ProbeResult::Failure)
            || self.probe_type == ProbeType::Startup
        {
            self.on_hold = true;
            self.run = 0;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProbeResult::{Failure as F, Success as S, Unknown as U};

    fn running(seconds: i64, started: bool) -> Gate {
        Gate {
            running: true,
            seconds_running: seconds,
            container_started: started,
            deleting: false,
        }
    }

    #[test]
    fn initial_results() {
        for (t, want) in [
            (ProbeType::Readiness, F),
            (ProbeType::Liveness, S),
            (ProbeType::Startup, U),
        ] {
            let mut s = ProbeState::new(t);
            assert_eq!(s.result_for("c1"), None, "no container yet");
            s.observe("c1", true);
            assert_eq!(s.result_for("c1"), Some(want), "{t}");
            assert_eq!(s.result_for("c0"), None);
        }
    }

    /// (probe type, success threshold, failure threshold, results fed, cached result after each)
    type ThresholdCase = (
        ProbeType,
        u32,
        u32,
        &'static [ProbeResult],
        &'static [ProbeResult],
    );

    #[test]
    fn thresholds_flip_only_after_consecutive_results() {
        let table: &[ThresholdCase] = &[
            (ProbeType::Readiness, 1, 3, &[S], &[S]),
            (ProbeType::Readiness, 2, 3, &[S, S], &[F, S]),
            (ProbeType::Readiness, 2, 3, &[S, F, S, S], &[F, F, F, S]),
            (
                ProbeType::Readiness,
                1,
                3,
                &[S, F, F, S, F, F, F],
                &[S, S, S, S, S, S, F],
            ),
            (ProbeType::Readiness, 1, 1, &[S, F, S], &[S, F, S]),
            (ProbeType::Liveness, 1, 3, &[F, F], &[S, S]),
            (ProbeType::Liveness, 1, 3, &[F, S, F, F], &[S, S, S, S]),
            (ProbeType::Liveness, 1, 3, &[F, F, F], &[S, S, F]),
            (ProbeType::Startup, 1, 3, &[F, F], &[U, U]),
            (ProbeType::Startup, 1, 3, &[F, S], &[U, S]),
            (ProbeType::Startup, 1, 2, &[F, F], &[U, F]),
        ];
        for (t, success, failure, fed, want) in table {
            let mut s = ProbeState::new(*t);
            s.observe("c1", true);
            let got: Vec<ProbeResult> = fed
                .iter()
                .map(|r| {
                    s.record(*r, Some("out".into()), *success, *failure);
                    s.result
                })
                .collect();
            assert_eq!(&got, want, "{t} {success}/{failure} {fed:?}");
        }
    }

    #[test]
    fn record_reports_changes_and_keeps_the_failure_message() {
        let mut s = ProbeState::new(ProbeType::Liveness);
        s.observe("c1", true);
        assert!(!s.record(F, Some("first".into()), 1, 2));
        assert_eq!(s.failure_message(), None);
        assert!(s.record(F, Some("second".into()), 1, 2));
        assert_eq!(s.failure_message(), Some("second"));
        assert!(s.on_hold(), "liveness failure holds probing");
        assert_eq!(s.decide(&running(100, true), 0), Decision::Wait);
        // A new container resumes probing from the initial result.
        assert!(s.observe("c2", true));
        assert_eq!(s.result_for("c2"), Some(S));
        assert!(!s.on_hold());
        assert_eq!(s.failure_message(), None);
        assert_eq!(s.decide(&running(100, true), 0), Decision::Probe);
    }

    #[test]
    fn startup_stops_once_decided() {
        let mut s = ProbeState::new(ProbeType::Startup);
        s.observe("c1", true);
        assert!(s.record(S, None, 1, 3));
        assert!(s.on_hold());
        assert_eq!(s.decide(&running(100, false), 0), Decision::Wait);
        // Readiness stays unaffected by hold logic.
        let mut r = ProbeState::new(ProbeType::Readiness);
        r.observe("c1", true);
        r.record(F, None, 1, 1);
        assert!(!r.on_hold());
    }

    #[test]
    fn non_running_containers_fail_unless_on_hold() {
        let mut r = ProbeState::new(ProbeType::Readiness);
        r.observe("c1", true);
        r.record(S, None, 1, 3);
        assert!(r.observe("c1", false));
        assert_eq!(r.result_for("c1"), Some(F));
        assert_eq!(r.failure_message(), None);

        let mut st = ProbeState::new(ProbeType::Startup);
        st.observe("c1", true);
        st.record(S, None, 1, 3);
        assert!(!st.observe("c1", false), "on hold: kept");
        assert_eq!(st.result_for("c1"), Some(S));

        // The first sight of a container reports no change even when it is not running.
        let mut l = ProbeState::new(ProbeType::Liveness);
        assert!(!l.observe("c1", false));
        assert_eq!(l.result_for("c1"), Some(F));
    }

    #[test]
    fn decisions_follow_kubelets_order() {
        let not_running = Gate {
            running: false,
            ..running(100, true)
        };
        let deleting = Gate {
            deleting: true,
            ..running(0, false)
        };
        // (probe type, gate, initial delay, decision)
        let table = [
            (ProbeType::Liveness, not_running, 0, Decision::Wait),
            (ProbeType::Liveness, deleting, 30, Decision::Finish),
            (ProbeType::Startup, deleting, 30, Decision::Finish),
            (
                ProbeType::Readiness,
                Gate {
                    container_started: true,
                    ..deleting
                },
                0,
                Decision::Probe,
            ),
            (ProbeType::Readiness, running(4, true), 5, Decision::Wait),
            (ProbeType::Readiness, running(5, true), 5, Decision::Probe),
            (
                ProbeType::Readiness,
                running(i64::MAX, true),
                5,
                Decision::Probe,
            ),
            (ProbeType::Readiness, running(10, false), 0, Decision::Wait),
            (ProbeType::Liveness, running(10, false), 0, Decision::Wait),
            (ProbeType::Liveness, running(10, true), 0, Decision::Probe),
            (ProbeType::Startup, running(10, false), 0, Decision::Probe),
            (ProbeType::Startup, running(10, true), 0, Decision::Wait),
            (ProbeType::Startup, running(1, false), 2, Decision::Wait),
        ];
        for (t, gate, delay, want) in table {
            let mut s = ProbeState::new(t);
            s.observe("c1", true);
            assert_eq!(s.decide(&gate, delay), want, "{t} {gate:?} delay {delay}");
        }
        assert_eq!(
            ProbeState::new(ProbeType::Liveness).decide(&running(10, true), 0),
            Decision::Wait,
            "no container yet"
        );
    }

    #[test]
    fn finish_records_success() {
        let mut s = ProbeState::new(ProbeType::Startup);
        s.observe("c1", true);
        assert!(s.finish());
        assert_eq!(s.result_for("c1"), Some(S));
        assert!(!s.finish());
    }

    #[test]
    fn seconds_are_truncated() {
        let s = 1_000_000_000;
        assert_eq!(Gate::seconds_between(10 * s, 14 * s + s / 2), 4);
        assert_eq!(Gate::seconds_between(10 * s, 10 * s), 0);
        assert_eq!(Gate::seconds_between(10 * s, 9 * s), -1);
        assert_eq!(Gate::seconds_between(0, 9 * s), i64::MAX);
    }
}
