//! The one place the durability rule is carried out: a step's [`Ready`] is persisted, then its
//! messages are handed on. The daemon's core loop and the simulator both call [`apply_ready`], so
//! the simulator tests the shell's own ordering, not a copy of it. No tokio, no sockets here:
//! where messages go is the caller's `send`.

use crate::core::{Notice, Outgoing, Ready};
use crate::store::{BankStore, Kv, StoreError};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// What applying a `Ready` did, for the caller to log and measure.
#[derive(Debug, Default)]
pub struct Applied {
    /// How long the store commit took (`None`: nothing to persist).
    pub commit_took: Option<Duration>,
    /// Messages handed to `send`.
    pub sent: usize,
    /// The step's notices, to be logged after the sends.
    pub notices: Vec<Notice>,
}

/// Persists `ready.persist` durably (the store syncs it to stable storage), and only then hands
/// each message of `ready.send` to `send`, in order. `send` may answer
/// [`ControlFlow::Break`] to stop handing on (the simulator crashes a branch mid-send that way);
/// the rest of the messages are dropped, which the protocol tolerates (they are resent after
/// the next connection's position exchange). If the commit fails nothing is sent.
pub fn apply_ready<K: Kv>(
    store: &mut BankStore<K>,
    ready: Ready,
    send: &mut dyn FnMut(Outgoing) -> ControlFlow<()>,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    if !ready.persist.is_empty() {
        let began = Instant::now();
        store.commit(&ready.persist)?;
        applied.commit_took = Some(began.elapsed());
    }
    for out in ready.send {
        if send(out).is_break() {
            break;
        }
        applied.sent += 1;
    }
    applied.notices = ready.notices;
    Ok(applied)
}
