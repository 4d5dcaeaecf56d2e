//! A connection's reader task: the agent's frames in, in order, handed to the connection
//! task over a channel, except pongs.
//!
//! A pong only says the agent is alive. At 10 000 agents pinged every 2 s that is 5 000
//! pongs a second; handing each to the connection task cost a channel hop and a wakeup of
//! that task just to note the time. Here the reader notes when it last heard anything in an
//! atomic the connection task reads at its next ping, and passes a pong on only when the
//! connection asks for one now and then (SQLite marks the agent seen from it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jitgate_proto::{AgentMsg, FrameError, read_frame};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the reader hands on: a message, or the error that ended the stream.
pub type Incoming = Result<AgentMsg, FrameError>;

/// When the agent was last heard from, written by the reader task.
pub struct Heard {
    since: Instant,
    /// Milliseconds after `since`.
    last_ms: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the last frame (of any kind) arrived; measured from the start of the
    /// connection when none has.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// The reader task, its messages and the time it last heard the agent. A pong is passed on
/// at most once per `pong_every` (never when `None`) unless it is the first frame; every
/// other message in order. A bad frame ends the task after passing on its error.
pub fn spawn<R>(
    rd: R,
    pong_every: Option<Duration>,
) -> (JoinHandle<()>, mpsc::Receiver<Incoming>, Arc<Heard>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Incoming>(64);
    let heard = Arc::new(Heard::new());
    let h = heard.clone();
    let task = tokio::spawn(async move {
        let mut rd = rd;
        let mut pong_passed: Option<Instant> = None;
        // The first frame always goes on: it must be the Hello, and one that is not ends
        // the connection at once.
        let mut first = true;
        loop {
            match read_frame::<_, AgentMsg>(&mut rd).await {
                Ok(Some(m)) => {
                    h.now();
                    if matches!(m, AgentMsg::Pong { .. }) && !first {
                        let pass = pong_every
                            .is_some_and(|every| pong_passed.is_none_or(|t| t.elapsed() >= every));
                        if !pass {
                            continue;
                        }
                        pong_passed = Some(Instant::now());
                    }
                    first = false;
                    if tx.send(Ok(m)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    (task, rx, heard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_proto::write_frame;

    /// The frames of `msgs`, then `tail` (raw bytes), read by a reader task.
    async fn read_all(
        msgs: &[AgentMsg],
        tail: &[u8],
        pong_every: Option<Duration>,
    ) -> Vec<Incoming> {
        let mut buf = Vec::new();
        for m in msgs {
            write_frame(&mut buf, m).await.unwrap();
        }
        buf.extend_from_slice(tail);
        let (task, mut rx, heard) = spawn(std::io::Cursor::new(buf), pong_every);
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m);
        }
        task.await.unwrap();
        assert!(heard.silent_for() < Duration::from_secs(5));
        got
    }

    fn pong(nonce: u64) -> AgentMsg {
        AgentMsg::Pong { nonce }
    }

    #[tokio::test]
    async fn pongs_are_passed_on_only_as_asked_and_everything_else_in_order() {
        let audit = AgentMsg::Audit { records: vec![] };
        let msgs = [audit.clone(), pong(1), pong(2), audit.clone(), pong(3)];

        let none: Vec<_> = read_all(&msgs, &[], None)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(none, vec![audit.clone(), audit.clone()]);

        // A first frame that is a pong goes on (the connection refuses it: no Hello).
        let first: Vec<_> = read_all(&msgs[1..], &[], None)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(first, vec![pong(1), audit.clone()]);

        let rare: Vec<_> = read_all(&msgs, &[], Some(Duration::from_secs(3600)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rare, vec![audit.clone(), pong(1), audit.clone()]);

        let all: Vec<_> = read_all(&msgs, &[], Some(Duration::ZERO))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(all, msgs.to_vec());
    }

    #[tokio::test]
    async fn a_bad_frame_is_passed_on_and_ends_the_reader() {
        // A length prefix beyond the frame limit.
        let audit = AgentMsg::Audit { records: vec![] };
        let got = read_all(
            &[audit.clone(), pong(1)],
            &[0xff, 0xff, 0xff, 0xff, 0],
            None,
        )
        .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].as_ref().ok(), Some(&audit), "{got:?}");
        assert!(got[1].is_err(), "{got:?}");
    }

    #[tokio::test]
    async fn silence_is_measured_from_the_last_frame() {
        let (tx, rx) = tokio::io::duplex(64);
        let (_task, _rx, heard) = spawn(rx, None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(heard.silent_for() >= Duration::from_millis(250));
        let mut tx = tx;
        write_frame(&mut tx, &pong(1)).await.unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while heard.silent_for() >= Duration::from_millis(250) {
            assert!(Instant::now() < end, "the pong was not noted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
