//! Wakeups within one running controller: committed grant outbox rows and policy changes wake
//! that controller's agent connections, which then read what is new for their VM. A value
//! owned by the controller (never process-wide), so that several controllers in one process
//! (tests, and the coming HA work) do not wake each other's connections; across processes the
//! connections also poll.

use tokio::sync::watch;

/// The controller's wakeup channels. Clones share them.
#[derive(Clone, Debug)]
pub struct Notifier {
    outbox: watch::Sender<u64>,
    policy: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            outbox: watch::channel(0).0,
            policy: watch::channel(0).0,
        }
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// New grant outbox rows were committed.
    pub fn outbox_committed(&self) {
        self.outbox.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A JIT policy change was committed.
    pub fn policy_committed(&self) {
        self.policy.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Changes whenever grant outbox rows are committed by this controller.
    pub fn outbox_watch(&self) -> watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// Changes whenever this controller commits a policy change.
    pub fn policy_watch(&self) -> watch::Receiver<u64> {
        self.policy.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_notifiers_are_independent() {
        let (a, b) = (Notifier::new(), Notifier::new());
        let (mut wa, wb) = (a.outbox_watch(), b.outbox_watch());
        let pa = a.policy_watch();
        a.outbox_committed();
        assert!(wa.has_changed().unwrap());
        assert!(!wb.has_changed().unwrap());
        assert!(!pa.has_changed().unwrap());
        wa.mark_unchanged();
        a.clone().outbox_committed();
        assert!(wa.has_changed().unwrap(), "clones share the channel");
    }
}
