//! `mini-kubelet exec CONTAINER -- CMD...`: CRI `ExecSync` (output and exit code), or with
//! `-i`/`-t` CRI `Exec` and the runtime's streaming server (SPDY, `v4.channel.k8s.io`), streamed
//! both ways as `crictl exec` / `kubectl exec` do; [`terminal`](super::terminal) handles the
//! local terminal of `-t`.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::os::fd::AsFd;

use mk_cri::api;
use mk_streaming::client::{Interactive, run_interactive};
use tokio::io::{AsyncWriteExt as _, DuplexStream};

use super::terminal::{self, RawMode};
use super::{CliError, Cri, resolve};

pub const EXAMPLES: &str = "The command's exit code is this process's exit code.

With -i, stdin is sent to the command as it is read, and closed at its end. With -t the runtime
gives the command a terminal (stdout and stderr merged); when stdin is a terminal too (-it), it
is put in raw mode for the session (every key, Ctrl-C and Ctrl-D included, goes to the remote
terminal; the settings are restored afterwards) and its size, then each resize, is sent. With -t
and stdin not a terminal, the runtime still gives a terminal and the local one is left alone.

Examples:
  mini-kubelet exec -it main -- sh                         # an interactive shell
  mini-kubelet exec main -- cat /etc/hostname
  mini-kubelet exec 3f2a9c -- sh -c 'exit 3'; echo $?      # 3
  echo hello | mini-kubelet exec -i main -- cat
  mini-kubelet exec --timeout 5 main -- sleep 10           # fails after 5 s";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Send stdin to the command, as it is read.
    #[arg(short, long)]
    pub interactive: bool,
    /// Ask the runtime for a terminal (with -i on a terminal: raw mode and resizes).
    #[arg(short, long)]
    pub tty: bool,
    /// Without -i/-t: stop the command after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    /// Container: ID, unique ID prefix, or name.
    pub container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(cri: &Cri, args: &Args) -> Result<i32, CliError> {
    let containers = resolve::all_containers(cri).await?;
    let container_id = resolve::container(&containers, &args.container)?.id.clone();
    if !args.interactive && !args.tty {
        let answer = cri
            .client()
            .exec_sync(api::ExecSyncRequest {
                container_id,
                cmd: args.command.clone(),
                timeout: args.timeout,
            })
            .await
            .map_err(cri.err())?;
        write_out(&answer.stdout, &answer.stderr)?;
        return Ok(answer.exit_code);
    }
    let url = cri
        .client()
        .exec(api::ExecRequest {
            container_id,
            cmd: args.command.clone(),
            tty: args.tty,
            stdin: args.interactive,
            stdout: true,
            stderr: !args.tty,
        })
        .await
        .map_err(cri.err())?
        .url;
    let io = |context: &str| {
        let context = context.to_string();
        move |source| CliError::Io { context, source }
    };
    // Raw only when what is typed reaches the remote terminal; restored when `raw` is dropped,
    // on every way out of this function.
    let raw = match args.tty && args.interactive && std::io::stdin().is_terminal() {
        true => Some(
            RawMode::enter(std::io::stdin())
                .map_err(std::io::Error::from)
                .map_err(io("putting the terminal in raw mode"))?,
        ),
        false => None,
    };
    let resize = match args.tty {
        true => Some(
            terminal::watch_sizes(terminal::local_size)
                .map_err(io("watching the terminal's size"))?,
        ),
        false => None,
    };
    let stdin = match args.interactive {
        true => Some(stdin_reader().map_err(io("reading stdin"))?),
        false => None,
    };
    let session = run_interactive(
        &url,
        Interactive {
            stdin,
            stdout: Some(async_output(std::io::stdout()).map_err(io("opening stdout"))?),
            stderr: Some(async_output(std::io::stderr()).map_err(io("opening stderr"))?),
            tty: args.tty,
            resize,
        },
    );
    let error = match raw {
        // Killed in raw mode: the session ends here, so that the guard restores the terminal.
        Some(_) => {
            let mut interrupts =
                terminal::Interrupts::listen().map_err(io("listening for signals"))?;
            tokio::select! {
                error = session => error,
                code = interrupts.recv() => return Ok(code),
            }
        }
        None => session.await,
    };
    drop(raw);
    exit_code(&error?)
}

/// An output of this process (stdout, stderr) as an `AsyncWrite`: a duplicate of its descriptor,
/// written from tokio's blocking pool (the session flushes after each chunk).
fn async_output(output: impl AsFd) -> std::io::Result<tokio::fs::File> {
    let fd = output.as_fd().try_clone_to_owned()?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// This process's stdin as an `AsyncRead`, fed by a thread of its own: a blocking read of a
/// terminal cannot be cancelled, and a plain thread (unlike tokio's blocking pool) holds nothing
/// up when the session ends while it waits for a key. A read error ends stdin like its end does.
fn stdin_reader() -> std::io::Result<DuplexStream> {
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("exec-stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if runtime.block_on(ours.write_all(&buf[..n])).is_err() {
                    return;
                }
            }
            let _ = runtime.block_on(ours.shutdown());
        })?;
    Ok(theirs)
}

fn write_out(stdout: &[u8], stderr: &[u8]) -> Result<(), CliError> {
    let io = |e| CliError::Io {
        context: "writing the command's output".into(),
        source: e,
    };
    let mut out = std::io::stdout();
    out.write_all(stdout)
        .and_then(|()| out.flush())
        .map_err(io)?;
    let mut err = std::io::stderr();
    err.write_all(stderr)
        .and_then(|()| err.flush())
        .map_err(io)?;
    Ok(())
}

/// The exit code a session's error stream reports: empty or `Success` is 0; `NonZeroExitCode`
/// carries the code in the `ExitCode` cause (as client-go's `CodeExitError`); any other
/// failure is an error with its message.
pub fn exit_code(error_stream: &str) -> Result<i32, CliError> {
    let text = error_stream.trim();
    if text.is_empty() {
        return Ok(0);
    }
    let failed = |reason: String| CliError::Failed {
        what: "exec".into(),
        reason,
    };
    let status: serde_json::Value =
        serde_json::from_str(text).map_err(|_| failed(text.to_string()))?;
    if status["status"] == "Success" {
        return Ok(0);
    }
    if status["reason"] == "NonZeroExitCode"
        && let Some(causes) = status["details"]["causes"].as_array()
        && let Some(code) = causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse::<i32>().ok())
    {
        return Ok(code);
    }
    Err(failed(
        status["message"].as_str().unwrap_or(text).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::exit_code;

    #[test]
    fn exit_codes_from_the_error_stream() {
        assert_eq!(exit_code("").ok(), Some(0));
        assert_eq!(
            exit_code(r#"{"metadata":{},"status":"Success"}"#).ok(),
            Some(0)
        );
        let failure = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code(failure).ok(), Some(3));
        let other =
            r#"{"status":"Failure","message":"container not running","reason":"InternalError"}"#;
        let err = exit_code(other).expect_err("failure");
        assert_eq!(err.to_string(), "exec: container not running");
    }
}
