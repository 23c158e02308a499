//! The local terminal of `exec -t`, as kubectl's and crictl's `term.TTY`: raw mode for the
//! session (restored by a guard on every way out) and the terminal's size for the runtime's
//! `resize` stream (the size at the start, then one per SIGWINCH that changed it).

use std::io::IsTerminal as _;
use std::os::fd::AsFd;

use mk_streaming::TerminalSize;
use nix::sys::signal::Signal as NixSignal;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// A terminal in raw mode until this is dropped, which puts back the settings it found.
pub struct RawMode<F: AsFd> {
    fd: F,
    saved: Termios,
}

impl<F: AsFd> RawMode<F> {
    /// Puts the terminal `fd` in raw mode (`cfmakeraw`, as moby/term's `MakeRaw`: no echo, no
    /// line editing, no signals from keys, no output processing): every key goes to the remote
    /// terminal, which does all of that itself.
    pub fn enter(fd: F) -> Result<Self, nix::Error> {
        let saved = termios::tcgetattr(fd.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(Self { fd, saved })
    }
}

impl<F: AsFd> Drop for RawMode<F> {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved) {
            eprintln!("mini-kubelet: restoring the terminal's settings: {e}");
        }
    }
}

/// The size of the terminal `fd`; `None` when it is not a terminal or has no size (0x0).
pub fn size_of<F: AsFd>(fd: F) -> Option<TerminalSize> {
    let size = rustix::termios::tcgetwinsize(fd).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some(TerminalSize {
        width: size.ws_col,
        height: size.ws_row,
    })
}

/// The size of this process's terminal: stdout's, else stdin's (kubectl measures its output).
pub fn local_size() -> Option<TerminalSize> {
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return size_of(stdout);
    }
    size_of(std::io::stdin())
}

/// The terminal sizes `measure` sees: the one now, then each new one after a SIGWINCH. The
/// watch stops when the receiver is dropped.
pub fn watch_sizes<M>(measure: M) -> std::io::Result<mpsc::Receiver<TerminalSize>>
where
    M: Fn() -> Option<TerminalSize> + Send + 'static,
{
    // Listening before the first measure: a resize in between is not lost.
    let mut resized = signal(SignalKind::window_change())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let now = measure();
            if let Some(size) = now.filter(|_| now != last) {
                last = now;
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                signal = resized.recv() => if signal.is_none() { return },
            }
        }
    });
    Ok(rx)
}

/// The signals that end a session from outside while the terminal is raw, as kubectl's
/// interrupt handler takes them (SIGINT, SIGHUP, SIGTERM, SIGQUIT): the session stops so that the
/// terminal is restored before the process exits.
pub struct Interrupts {
    interrupt: Signal,
    hangup: Signal,
    terminate: Signal,
    quit: Signal,
}

impl Interrupts {
    pub fn listen() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The first of them to arrive, as the exit code a shell gives a process it killed (128 +
    /// its number).
    pub async fn recv(&mut self) -> i32 {
        let signal = tokio::select! {
            _ = self.interrupt.recv() => NixSignal::SIGINT,
            _ = self.hangup.recv() => NixSignal::SIGHUP,
            _ = self.terminate.recv() => NixSignal::SIGTERM,
            _ = self.quit.recv() => NixSignal::SIGQUIT,
        };
        128 + signal as i32
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use nix::pty::{OpenptyResult, Winsize, openpty};
    use nix::sys::termios::{LocalFlags, OutputFlags};

    use super::*;

    fn pty(rows: u16, cols: u16) -> OpenptyResult {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        openpty(Some(&size), None).expect("a pseudo-terminal")
    }

    fn local_flags(fd: &OwnedFd) -> LocalFlags {
        termios::tcgetattr(fd).expect("termios").local_flags
    }

    #[test]
    fn raw_mode_lasts_as_long_as_its_guard() {
        let pty = pty(24, 80);
        let cooked = local_flags(&pty.slave);
        assert!(cooked.contains(LocalFlags::ICANON | LocalFlags::ECHO));
        let guard = RawMode::enter(&pty.slave).expect("raw mode");
        let raw = termios::tcgetattr(&pty.slave).expect("termios");
        assert!(!raw.local_flags.intersects(
            LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN
        ));
        assert!(!raw.output_flags.contains(OutputFlags::OPOST));
        drop(guard);
        assert_eq!(local_flags(&pty.slave), cooked);

        // Also when the code holding it fails.
        let failing = || -> Result<(), std::io::Error> {
            let _guard = RawMode::enter(&pty.slave)?;
            Err(std::io::Error::other("session failed"))
        };
        assert!(failing().is_err());
        assert_eq!(local_flags(&pty.slave), cooked);
    }

    #[test]
    fn not_a_terminal_is_refused_and_has_no_size() {
        let file = tempfile::tempfile().expect("a file");
        assert!(RawMode::enter(&file).is_err());
        assert_eq!(size_of(&file), None);
    }

    #[test]
    fn sizes_are_read_from_the_terminal() {
        let terminal = pty(40, 100);
        assert_eq!(
            size_of(&terminal.slave),
            Some(TerminalSize {
                width: 100,
                height: 40
            })
        );
        assert_eq!(size_of(&pty(0, 0).slave), None);
    }

    #[tokio::test]
    async fn an_interrupt_is_reported_as_a_shell_would() {
        let mut interrupts = Interrupts::listen().expect("listen");
        nix::sys::signal::raise(NixSignal::SIGHUP).expect("raise");
        let code = tokio::time::timeout(std::time::Duration::from_secs(10), interrupts.recv())
            .await
            .expect("the signal arrives");
        assert_eq!(code, 129);
    }

    #[tokio::test]
    async fn the_size_is_sent_at_once_then_on_changes() {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(vec![
            Some(TerminalSize {
                width: 80,
                height: 24,
            }),
            None,
        ]));
        let source = sizes.clone();
        let mut rx = watch_sizes(move || {
            let mut sizes = source.lock().unwrap_or_else(|e| e.into_inner());
            if sizes.len() > 1 {
                sizes.remove(0)
            } else {
                sizes[0]
            }
        })
        .expect("watch");
        let limit = std::time::Duration::from_secs(10);
        let first = tokio::time::timeout(limit, rx.recv()).await.expect("first");
        assert_eq!(
            first,
            Some(TerminalSize {
                width: 80,
                height: 24
            })
        );
        // A SIGWINCH while the size is unknown sends nothing; one with a new size sends it.
        let raise = || nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).expect("raise");
        raise();
        *sizes.lock().unwrap_or_else(|e| e.into_inner()) = vec![Some(TerminalSize {
            width: 100,
            height: 40,
        })];
        raise();
        let next = tokio::time::timeout(limit, rx.recv())
            .await
            .expect("resize");
        assert_eq!(
            next,
            Some(TerminalSize {
                width: 100,
                height: 40
            })
        );
    }
}
