//! Running one plugin binary: the `CNI_*` environment, the config on stdin, the result or the
//! CNI error on stdout, a deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::error::{CniError, PluginError};

/// What a plugin is asked to do, as its environment says it.
#[derive(Debug, Clone)]
pub(crate) struct Invocation<'a> {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: &'static str,
    pub container_id: &'a str,
    /// The network namespace path; empty is allowed for DEL.
    pub netns: &'a str,
    pub if_name: &'a str,
    /// `K=V;K2=V2`.
    pub args: &'a str,
    /// The bin dirs joined with `:`.
    pub path: &'a str,
}

/// The first executable file named `name` in `dirs`.
pub(crate) async fn find_plugin(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    for dir in dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = tokio::fs::metadata(&candidate).await
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Some(candidate);
        }
    }
    None
}

#[derive(Deserialize)]
struct WireError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The CNI error in a failed plugin's stdout, if it printed one.
pub(crate) fn parse_error(stdout: &[u8]) -> Option<PluginError> {
    let wire: WireError = serde_json::from_slice(stdout).ok()?;
    Some(PluginError {
        code: wire.code,
        msg: wire.msg,
        details: wire.details,
    })
}

fn trimmed(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Runs `binary` (the plugin `plugin`) with `stdin` as its config; its stdout when it exits 0.
/// The plugin inherits this process's environment (plugins such as portmap run `iptables` from
/// `PATH`) plus the `CNI_*` variables, and is killed when `timeout` passes.
pub(crate) async fn exec_plugin(
    binary: &Path,
    plugin: &str,
    invocation: &Invocation<'_>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let mut child = tokio::process::Command::new(binary)
        .env("CNI_COMMAND", invocation.command)
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_NETNS", invocation.netns)
        .env("CNI_IFNAME", invocation.if_name)
        .env("CNI_ARGS", invocation.args)
        .env("CNI_PATH", invocation.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CniError::Spawn {
            path: binary.to_path_buf(),
            source,
        })?;
    let mut pipe = child.stdin.take();
    let write = async move {
        if let Some(pipe) = pipe.as_mut() {
            pipe.write_all(stdin).await?;
            pipe.shutdown().await?;
        }
        drop(pipe);
        Ok::<(), std::io::Error>(())
    };
    let run = async { tokio::join!(write, child.wait_with_output()) };
    let (written, output) =
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| CniError::Timeout {
                plugin: plugin.to_string(),
                command: invocation.command,
                timeout,
            })?;
    let output = output.map_err(|e| CniError::io(format!("running CNI plugin {plugin}"), e))?;
    if output.status.success() {
        // A plugin that exits 0 without reading all of its config still succeeded.
        if let Err(e) = written
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            return Err(CniError::io(
                format!("writing the config of CNI plugin {plugin}"),
                e,
            ));
        }
        return Ok(output.stdout);
    }
    if let Some(error) = parse_error(&output.stdout) {
        if !output.stderr.is_empty() {
            tracing::debug!(plugin, stderr = %trimmed(&output.stderr), "CNI plugin stderr");
        }
        return Err(CniError::Plugin {
            plugin: plugin.to_string(),
            command: invocation.command,
            error,
        });
    }
    let mut text = trimmed(&output.stdout);
    let stderr = trimmed(&output.stderr);
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&stderr);
    }
    Err(CniError::Failed {
        plugin: plugin.to_string(),
        command: invocation.command,
        status: output.status.to_string(),
        output: text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_errors_parse() {
        let err = parse_error(br#"{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"lock"}"#)
            .expect("error");
        assert_eq!(
            err,
            PluginError {
                code: 11,
                msg: "busy".into(),
                details: "lock".into()
            }
        );
        assert_eq!(
            parse_error(br#"{"code":7,"msg":"bad"}"#).map(|e| e.details),
            Some(String::new())
        );
        assert!(parse_error(b"panic: oops").is_none());
        assert!(parse_error(br#"{"msg":"no code"}"#).is_none());
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    const INVOCATION: Invocation<'static> = Invocation {
        command: "ADD",
        container_id: "c1",
        netns: "/proc/1/ns/net",
        if_name: "eth0",
        args: "K8S_POD_NAME=p",
        path: "/nowhere",
    };

    #[tokio::test]
    async fn plugins_get_env_and_stdin_and_their_failures_are_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let echo = script(
            dir.path(),
            "echo-env",
            r#"printf '{"env":"%s %s %s %s %s %s","stdin":%s}' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "$(cat)""#,
        );
        let out = exec_plugin(
            &echo,
            "echo-env",
            &INVOCATION,
            br#"{"a":1}"#,
            Duration::from_secs(5),
        )
        .await
        .expect("runs");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            value["env"],
            "ADD c1 /proc/1/ns/net eth0 K8S_POD_NAME=p /nowhere"
        );
        assert_eq!(value["stdin"]["a"], 1);

        let cni_error = script(
            dir.path(),
            "fails",
            r#"echo '{"code":7,"msg":"bad config","details":"no bridge"}'; echo oops >&2; exit 1"#,
        );
        let err = exec_plugin(
            &cni_error,
            "fails",
            &INVOCATION,
            b"{}",
            Duration::from_secs(5),
        )
        .await
        .expect_err("fails");
        assert_eq!(err.plugin_error().map(|e| e.code), Some(7), "{err}");

        let crash = script(dir.path(), "crash", "echo 'segfault' >&2; exit 2");
        let err = exec_plugin(&crash, "crash", &INVOCATION, b"{}", Duration::from_secs(5))
            .await
            .expect_err("fails");
        assert!(
            matches!(&err, CniError::Failed { output, .. } if output == "segfault"),
            "{err}"
        );

        let slow = script(dir.path(), "slow", "exec sleep 30");
        let started = std::time::Instant::now();
        let err = exec_plugin(
            &slow,
            "slow",
            &INVOCATION,
            b"{}",
            Duration::from_millis(200),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, CniError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        assert_eq!(
            find_plugin(
                &[PathBuf::from("/nonexistent"), dir.path().to_path_buf()],
                "crash"
            )
            .await,
            Some(crash)
        );
        std::fs::write(dir.path().join("plain"), "x").expect("write");
        assert_eq!(
            find_plugin(&[dir.path().to_path_buf()], "plain").await,
            None
        );
        assert_eq!(
            find_plugin(&[dir.path().to_path_buf()], "absent").await,
            None
        );
    }
}
