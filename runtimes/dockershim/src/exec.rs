//! ExecSync: a Docker exec with its output collected.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures::StreamExt;
use k8s_cri::v1 as api;

use crate::DockerShim;
use crate::error::OpError;

/// Most output kept per stream (kubelet's limit on ExecSync output).
pub(crate) const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;

/// Appends `chunk` to `buffer` up to [`MAX_EXEC_OUTPUT`] bytes; the rest is dropped.
pub(crate) fn append_capped(buffer: &mut Vec<u8>, chunk: &[u8]) {
    let room = MAX_EXEC_OUTPUT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

impl DockerShim {
    pub(crate) async fn exec_sync(
        &self,
        request: api::ExecSyncRequest,
    ) -> Result<api::ExecSyncResponse, OpError> {
        if request.cmd.is_empty() {
            return Err(OpError::InvalidArgument("no command given".into()));
        }
        let (inspect, _) = self
            .inspect_cri_container(&request.container_id)
            .await?
            .ok_or_else(|| {
                OpError::NotFound(format!("container {} not found", request.container_id))
            })?;
        let id = inspect.id.unwrap_or_else(|| request.container_id.clone());
        let exec = self
            .docker()
            .create_exec(
                &id,
                CreateExecOptions::<String> {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(request.cmd.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| OpError::docker(format!("creating an exec in container {id}"), e))?;
        let run = self.run_exec(&exec.id);
        let result = if request.timeout > 0 {
            let limit = Duration::from_secs(request.timeout.unsigned_abs());
            match tokio::time::timeout(limit, run).await {
                Ok(result) => result,
                Err(_) => {
                    self.kill_exec(&id, &exec.id).await;
                    return Err(OpError::DeadlineExceeded(format!(
                        "command {:?} in container {id} timed out after {}s",
                        request.cmd, request.timeout
                    )));
                }
            }
        } else {
            run.await
        };
        result.map_err(|e| match e {
            OpError::Docker { context, source }
                if crate::error::docker_status_code(&source) == Some(409) =>
            {
                OpError::FailedPrecondition(format!("{context}: {source}"))
            }
            other => other,
        })
    }

    async fn run_exec(&self, exec_id: &str) -> Result<api::ExecSyncResponse, OpError> {
        let started = self
            .docker()
            .start_exec(
                exec_id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| OpError::docker(format!("starting exec {exec_id}"), e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(item) = output.next().await {
                match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        append_capped(&mut stdout, &message);
                    }
                    Ok(LogOutput::StdErr { message }) => append_capped(&mut stderr, &message),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => {
                        return Err(OpError::docker(format!("reading exec {exec_id} output"), e));
                    }
                }
            }
        }
        let exit_code = self.exec_exit_code(exec_id).await?;
        Ok(api::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        })
    }

    /// The exit code of an exec whose output ended: the output ends when the process does, and
    /// dockerd records the exit code a moment later.
    pub(crate) async fn exec_exit_code(&self, exec_id: &str) -> Result<i32, OpError> {
        let mut delay = Duration::from_millis(2);
        loop {
            let state = self
                .docker()
                .inspect_exec(exec_id)
                .await
                .map_err(|e| OpError::docker(format!("inspecting exec {exec_id}"), e))?;
            if !state.running.unwrap_or(false) {
                return Ok(state
                    .exit_code
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(-1));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// Kills a timed-out exec'd process. Docker has no API for it: its host PID comes from the exec
    /// inspection and is only signalled when `/proc/<pid>/cgroup` names the container (so a PID
    /// of another PID namespace, or one already reused, is left alone).
    async fn kill_exec(&self, container_id: &str, exec_id: &str) {
        let Ok(state) = self.docker().inspect_exec(exec_id).await else {
            return;
        };
        let Some(pid) = state
            .pid
            .filter(|p| *p > 0 && state.running.unwrap_or(false))
        else {
            return;
        };
        let cgroup = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .await
            .unwrap_or_default();
        if !cgroup.contains(container_id) {
            tracing::debug!(
                pid,
                container = container_id,
                "not killing a timed-out exec: not ours"
            );
            return;
        }
        match tokio::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .await
        {
            Ok(status) if status.success() => {
                tracing::debug!(pid, container = container_id, "killed a timed-out exec");
            }
            Ok(status) => tracing::debug!(pid, %status, "kill of a timed-out exec failed"),
            Err(e) => tracing::debug!(pid, error = %e, "could not run kill"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped() {
        let mut buffer = vec![0; MAX_EXEC_OUTPUT - 2];
        append_capped(&mut buffer, b"abcd");
        assert_eq!(buffer.len(), MAX_EXEC_OUTPUT);
        assert_eq!(&buffer[MAX_EXEC_OUTPUT - 2..], b"ab");
        append_capped(&mut buffer, b"more");
        assert_eq!(buffer.len(), MAX_EXEC_OUTPUT);
    }
}
