//! Renewal of one certificate (client-go's certificate manager): at a random point between 70 %
//! and 90 % of the current pair's lifetime (at once when there is none), a new key and request
//! are sent; once issued, the pair is stored and swapped in. Failures are retried with a growing
//! delay.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::CertificateError;
use super::csr::{Template, generate_key};
use super::identity::SharedIdentity;
use super::request::{RequestName, request_certificate};
use super::store::{CertStore, Validity};

/// How long one renewal request is waited on (client-go's certificateWaitTimeout).
pub const RENEWAL_WAIT: Duration = Duration::from_secs(15 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(5 * 60);

/// When to renew a pair valid over `validity`: `not_before` plus 70 % to 90 % of the lifetime,
/// `jitter` (0..=1) choosing where.
pub fn rotation_deadline(validity: Validity, jitter: f64) -> SystemTime {
    let lifetime = validity
        .not_after
        .duration_since(validity.not_before)
        .unwrap_or_default();
    let fraction = 0.7 + 0.2 * jitter.clamp(0.0, 1.0);
    validity.not_before + lifetime.mul_f64(fraction)
}

/// The delay before retry number `failures` (1-based): 2 s doubling, at most 5 min.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// What one renewal loop keeps.
#[derive(Clone)]
pub struct Rotation {
    pub template: Template,
    pub store: CertStore,
    pub identity: SharedIdentity,
    /// Sends the requests (the node's own identity).
    pub client: kube::Client,
    /// Sends them once the current pair has expired (the bootstrap credentials), if given.
    pub fallback: Option<kube::Client>,
    /// The current pair's validity; none: request one at once.
    pub validity: Option<Validity>,
    pub wait_timeout: Duration,
}

impl Rotation {
    /// Renews until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut failures = 0;
        loop {
            let wait = if failures > 0 {
                retry_delay(failures)
            } else {
                match self.validity {
                    Some(validity) => {
                        let deadline = rotation_deadline(validity, fastrand::f64());
                        tracing::info!(
                            signer = self.template.signer,
                            expiration = %jiff::Timestamp::try_from(validity.not_after).map(|t| t.to_string()).unwrap_or_default(),
                            deadline = %jiff::Timestamp::try_from(deadline).map(|t| t.to_string()).unwrap_or_default(),
                            "certificate rotation deadline"
                        );
                        deadline
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                    }
                    None => Duration::ZERO,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let renewed = tokio::select! {
                () = cancel.cancelled() => return,
                renewed = self.renew() => renewed,
            };
            match renewed {
                Ok(validity) => {
                    self.validity = Some(validity);
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(
                        signer = self.template.signer,
                        error = %e,
                        retry_in = %humantime::format_duration(retry_delay(failures)),
                        "certificate rotation failed"
                    );
                }
            }
        }
    }

    /// One renewal: a new key and request; the issued pair stored and swapped in.
    pub async fn renew(&self) -> Result<Validity, CertificateError> {
        let key = generate_key()?;
        let expired = self
            .validity
            .is_some_and(|v| SystemTime::now() > v.not_after);
        let client = match &self.fallback {
            Some(bootstrap) if expired => bootstrap,
            _ => &self.client,
        };
        let pem = request_certificate(
            client,
            &self.template,
            &key,
            RequestName::Generate("csr-".into()),
            self.wait_timeout,
        )
        .await?;
        let pair = self.store.update(&pem, &key.serialize_pem())?;
        self.identity.set(pair.certified_key()?);
        tracing::info!(
            signer = self.template.signer,
            path = %self.store.current_path().display(),
            "certificate rotated"
        );
        Ok(pair.validity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity(start: u64, lifetime: u64) -> Validity {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(start);
        Validity {
            not_before,
            not_after: not_before + Duration::from_secs(lifetime),
        }
    }

    #[test]
    fn deadlines_fall_between_70_and_90_percent_of_the_lifetime() {
        let v = validity(1_000, 1_000);
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rotation_deadline(v, 0.0), at(1_700));
        assert_eq!(rotation_deadline(v, 1.0), at(1_900));
        assert_eq!(rotation_deadline(v, 0.5), at(1_800));
        assert_eq!(rotation_deadline(v, -3.0), at(1_700), "jitter is clamped");
        assert_eq!(rotation_deadline(v, 7.0), at(1_900));
        for _ in 0..100 {
            let d = rotation_deadline(v, fastrand::f64());
            assert!(d >= at(1_700) && d <= at(1_900));
        }
        // A certificate whose end precedes its start is renewed at its start.
        let backwards = Validity {
            not_before: at(5_000),
            not_after: at(4_000),
        };
        assert_eq!(rotation_deadline(backwards, 0.5), at(5_000));
    }

    #[test]
    fn retries_double_up_to_five_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(5), Duration::from_secs(32));
        assert_eq!(retry_delay(9), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(300));
    }
}
