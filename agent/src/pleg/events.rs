//! Follows the runtime's container events (CRI `GetContainerEvents`) for the event-driven PLEG:
//! reports when the stream opens, which pod each event concerns, and when the stream ends or
//! cannot be opened, and opens it again after a pause (kubelet's evented PLEG gives up after five
//! tries; a runtime that comes back with events is followed again here).

use std::time::Duration;

use mk_cri::{CONTAINER_EVENTS, CriClient, CriError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a subscription the runtime neither refused nor answered counts as open. tonic returns
/// the stream only with the response headers, which a Go runtime sends with its first event; a
/// runtime without the call refuses it at once.
pub const ESTABLISHED_AFTER: Duration = Duration::from_secs(2);
/// How long to wait before asking again a runtime that does not implement the call.
pub const UNIMPLEMENTED_RETRY: Duration = Duration::from_secs(300);
/// Pauses before opening a broken stream again: doubling from the first to the second.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the follower tells the PLEG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// The stream is open: from now on every change of a container or sandbox is reported.
    Up,
    /// Something of the pod with this UID changed (`None`: the event named no pod).
    Changed(Option<String>),
    /// The stream ended or could not be opened; changes may have been missed.
    Down { error: String, unimplemented: bool },
}

/// Why one subscription ended.
enum End {
    /// The PLEG is gone.
    Closed,
    /// The runtime ended the stream.
    Ended,
    /// The runtime ended the stream at once, before any event: it serves none (cri-o does so
    /// unless `enable_pod_events` is set).
    Refused,
    Failed(CriError),
}

/// Follows the runtime's events until `cancel` or until the PLEG drops its receiver.
pub async fn follow(cri: CriClient, feed: mpsc::Sender<Feed>, cancel: CancellationToken) {
    let mut delay = RETRY_MIN;
    loop {
        let opened = Instant::now();
        let end = tokio::select! {
            () = cancel.cancelled() => return,
            end = follow_once(&cri, &feed) => end,
        };
        let (error, unimplemented) = match end {
            End::Closed => return,
            End::Ended => ("the runtime ended the event stream".to_string(), false),
            End::Refused => (
                "the runtime ends the event stream at once (cri-o sends events only with enable_pod_events)"
                    .to_string(),
                true,
            ),
            End::Failed(e) => (e.to_string(), e.is_unimplemented()),
        };
        if feed
            .send(Feed::Down {
                error,
                unimplemented,
            })
            .await
            .is_err()
        {
            return;
        }
        let pause = if unimplemented {
            UNIMPLEMENTED_RETRY
        } else {
            if opened.elapsed() > RETRY_MAX {
                // It had been working: start the back-off over.
                delay = RETRY_MIN;
            }
            let pause = delay;
            delay = (delay * 2).min(RETRY_MAX);
            pause
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn follow_once(cri: &CriClient, feed: &mpsc::Sender<Feed>) -> End {
    let call = cri.container_events();
    tokio::pin!(call);
    let answer = tokio::select! {
        answer = &mut call => {
            if answer.is_ok() && feed.send(Feed::Up).await.is_err() {
                return End::Closed;
            }
            answer
        }
        () = tokio::time::sleep(ESTABLISHED_AFTER) => {
            if feed.send(Feed::Up).await.is_err() {
                return End::Closed;
            }
            call.await
        }
    };
    let mut stream = match answer {
        Ok(stream) => stream,
        Err(e) => return End::Failed(e),
    };
    let opened = Instant::now();
    let mut events = 0_u64;
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                let uid = event
                    .pod_sandbox_status
                    .and_then(|s| s.metadata)
                    .map(|m| m.uid)
                    .filter(|uid| !uid.is_empty());
                events += 1;
                if feed.send(Feed::Changed(uid)).await.is_err() {
                    return End::Closed;
                }
            }
            Ok(None) if events == 0 && opened.elapsed() < ESTABLISHED_AFTER => return End::Refused,
            Ok(None) => return End::Ended,
            Err(status) => return End::Failed(CriError::from_status(CONTAINER_EVENTS, status)),
        }
    }
}
