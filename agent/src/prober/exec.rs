//! The exec handler: CRI ExecSync in the container with the probe's timeout.

use std::time::Duration;

use mk_cri::{CriClient, CriError, api};

use super::{Outcome, ProbeError};

/// kubelet's limit on the exec output it keeps (`maxReadLength`).
pub const MAX_OUTPUT: usize = 10 * 1024;

/// Runs `command` in the container: exit code 0 is success, another code a failure carrying the
/// combined stdout and stderr, a timeout a failure (`command "..." timed out`). Other runtime
/// errors are errors (kubelet discards such a result).
pub async fn probe(
    cri: &CriClient,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<Outcome, ProbeError> {
    let request = api::ExecSyncRequest {
        container_id: container_id.to_string(),
        cmd: command.to_vec(),
        timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
    };
    match cri.exec_sync(request).await {
        Ok(response) => {
            let mut output = response.stdout;
            output.extend_from_slice(&response.stderr);
            output.truncate(MAX_OUTPUT);
            let text = String::from_utf8_lossy(&output).into_owned();
            Ok(if response.exit_code == 0 {
                Outcome::Success(text)
            } else {
                Outcome::Failure(text)
            })
        }
        Err(CriError::Timeout { .. })
        | Err(CriError::Status {
            code: tonic::Code::DeadlineExceeded,
            ..
        }) => Ok(Outcome::Failure(format!(
            "command {:?} timed out",
            command.join(" ")
        ))),
        Err(e) => Err(ProbeError::Cri(e)),
    }
}
