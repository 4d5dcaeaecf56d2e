//! Wakeups of one running controller's agent connections. A commit says what it touched
//! ([`Touched`]: the VMs that got grant outbox rows, the VMs and resource groups whose policy
//! changed, the VMs whose agents were revoked) and only the connections of those VMs are woken ([`Subscription`]); the others
//! sleep. A value owned by the controller (never process-wide), so that several controllers
//! in one process (tests) do not wake each other's connections. On PostgreSQL the same
//! [`Touched`] travels to the other controllers as a `NOTIFY` payload (`cluster`), with a
//! periodic catch-up behind it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What a committed transaction touched: whose agent connections must look again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Touched {
    /// VMs with new grant outbox rows.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outbox: BTreeSet<String>,
    /// VMs whose own policy changed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub policy_vms: BTreeSet<String>,
    /// Resource groups whose policy changed (every VM of the group).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub policy_groups: BTreeSet<String>,
    /// VMs whose agents were revoked.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub agents: BTreeSet<String>,
    /// Too much to name (or not known): every connection looks again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub everything: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.outbox.is_empty()
            && self.policy_vms.is_empty()
            && self.policy_groups.is_empty()
            && self.agents.is_empty()
    }

    /// Every connection looks again.
    pub fn everything() -> Touched {
        Touched {
            everything: true,
            ..Touched::default()
        }
    }
}

/// The PostgreSQL channel that carries [`Notice`]s between controllers.
pub const CHANNEL: &str = "jitgate_touched";

/// Largest payload sent as is (PostgreSQL's limit is 8000 bytes); a larger [`Touched`] is
/// sent as "everything".
const MAX_PAYLOAD: usize = 4000;

/// A `NOTIFY` payload: which controller committed, and what it touched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notice {
    pub from: String,
    pub touched: Touched,
}

impl Notice {
    /// The payload text, at most [`MAX_PAYLOAD`] bytes.
    pub fn payload(from: &str, touched: &Touched) -> Result<String, serde_json::Error> {
        let n = Notice {
            from: from.to_string(),
            touched: touched.clone(),
        };
        let s = serde_json::to_string(&n)?;
        if s.len() <= MAX_PAYLOAD {
            return Ok(s);
        }
        serde_json::to_string(&Notice {
            from: n.from,
            touched: Touched::everything(),
        })
    }
}

/// What a woken connection must look at again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wake {
    /// Its VM's grant outbox.
    pub outbox: bool,
    /// Its VM's effective policy.
    pub policy: bool,
    /// Its agent's status (revoked?).
    pub agent: bool,
}

const OUTBOX: u8 = 1;
const POLICY: u8 = 2;
const AGENT: u8 = 4;
const ALL: u8 = OUTBOX | POLICY | AGENT;

impl Wake {
    fn from_bits(b: u8) -> Wake {
        Wake {
            outbox: b & OUTBOX != 0,
            policy: b & POLICY != 0,
            agent: b & AGENT != 0,
        }
    }

    pub fn any(self) -> bool {
        self.outbox || self.policy || self.agent
    }
}

/// One connection's mailbox: the kinds of change pending, and a permit to wake it.
#[derive(Debug, Default)]
struct Slot {
    pending: AtomicU8,
    notify: Notify,
}

impl Slot {
    fn wake(&self, bits: u8) {
        self.pending.fetch_or(bits, Ordering::AcqRel);
        // Stores a permit when the connection is not waiting: no wakeup is lost.
        self.notify.notify_one();
    }
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    /// Connections by VM, then by subscription id.
    by_vm: HashMap<String, HashMap<u64, Arc<Slot>>>,
    /// The resource group of each subscribed VM, and the VMs of each group.
    by_group: HashMap<String, BTreeSet<String>>,
}

#[derive(Debug)]
struct Inner {
    registry: Mutex<Registry>,
    /// This controller's id in `NOTIFY` payloads: its own notifications are not applied twice.
    origin: String,
    /// Connections woken, for tests and logs.
    woken: AtomicU64,
    /// Whether commits tell the other controllers (off while PostgreSQL's notification queue
    /// is nearly full: a notifying commit would then fail; the catch-up still delivers).
    push: AtomicBool,
    /// Commits that wrote notification events wake the delivery worker (`outbox`).
    events: tokio::sync::Notify,
}

/// The controller's wakeups. Clones share them.
#[derive(Clone, Debug)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::default()),
                origin: uuid::Uuid::new_v4().to_string(),
                woken: AtomicU64::new(0),
                push: AtomicBool::new(true),
                events: tokio::sync::Notify::new(),
            }),
        }
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// This controller's id, as its `NOTIFY` payloads carry it.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// A connection for `vm` (of resource group `group`) waits for changes to it. Subscribe
    /// before reading, so that no commit in between is missed.
    pub fn subscribe(&self, vm: &str, group: &str) -> Subscription {
        let slot = Arc::new(Slot::default());
        let id = match self.inner.registry.lock() {
            Ok(mut r) => {
                r.next += 1;
                let id = r.next;
                r.by_vm
                    .entry(vm.to_string())
                    .or_default()
                    .insert(id, slot.clone());
                r.by_group
                    .entry(group.to_string())
                    .or_default()
                    .insert(vm.to_string());
                id
            }
            Err(_) => 0,
        };
        Subscription {
            notifier: self.clone(),
            vm: vm.to_string(),
            group: group.to_string(),
            id,
            slot,
        }
    }

    /// Wakes the connections of what `t` touched; returns how many were woken.
    pub fn wake(&self, t: &Touched) -> usize {
        let Ok(r) = self.inner.registry.lock() else {
            return 0;
        };
        let mut woken = 0;
        if t.everything {
            for slots in r.by_vm.values() {
                for s in slots.values() {
                    s.wake(ALL);
                    woken += 1;
                }
            }
        } else {
            let mut bits: HashMap<&str, u8> = HashMap::new();
            for vm in &t.outbox {
                *bits.entry(vm).or_default() |= OUTBOX;
            }
            for vm in &t.policy_vms {
                *bits.entry(vm).or_default() |= POLICY;
            }
            for vm in &t.agents {
                *bits.entry(vm).or_default() |= AGENT;
            }
            for g in &t.policy_groups {
                for vm in r.by_group.get(g).into_iter().flatten() {
                    *bits.entry(vm).or_default() |= POLICY;
                }
            }
            for (vm, b) in bits {
                for s in r.by_vm.get(vm).into_iter().flat_map(HashMap::values) {
                    s.wake(b);
                    woken += 1;
                }
            }
        }
        self.inner.woken.fetch_add(woken as u64, Ordering::Relaxed);
        woken
    }

    /// Whether commits send their [`Notice`] to the other controllers.
    pub fn push(&self) -> bool {
        self.inner.push.load(Ordering::Relaxed)
    }

    /// Turns the sending of notices on or off; returns the previous setting.
    pub fn set_push(&self, on: bool) -> bool {
        self.inner.push.swap(on, Ordering::Relaxed)
    }

    /// A commit wrote notification events: the delivery worker looks now.
    pub fn events_committed(&self) {
        self.inner.events.notify_one();
    }

    /// Waits for [`Notifier::events_committed`] (a wakeup before the wait is kept).
    pub async fn events(&self) {
        self.inner.events.notified().await;
    }

    /// How many connection wakeups this controller has made.
    pub fn woken(&self) -> u64 {
        self.inner.woken.load(Ordering::Relaxed)
    }

    fn unsubscribe(&self, vm: &str, group: &str, id: u64) {
        let Ok(mut r) = self.inner.registry.lock() else {
            return;
        };
        let mut vm_gone = false;
        if let Some(slots) = r.by_vm.get_mut(vm) {
            slots.remove(&id);
            vm_gone = slots.is_empty();
        }
        if vm_gone {
            r.by_vm.remove(vm);
            if let Some(vms) = r.by_group.get_mut(group) {
                vms.remove(vm);
                if vms.is_empty() {
                    r.by_group.remove(group);
                }
            }
        }
    }
}

/// One connection's wakeups; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    notifier: Notifier,
    vm: String,
    group: String,
    id: u64,
    slot: Arc<Slot>,
}

impl Subscription {
    /// Waits until something of this VM changed; returns what (and clears it). Cancel-safe:
    /// a change seen by a dropped wait stays pending.
    pub async fn changed(&mut self) -> Wake {
        loop {
            let bits = self.slot.pending.swap(0, Ordering::AcqRel);
            if bits != 0 {
                return Wake::from_bits(bits);
            }
            self.slot.notify.notified().await;
        }
    }

    /// What is pending, without clearing it.
    pub fn pending(&self) -> Wake {
        Wake::from_bits(self.slot.pending.load(Ordering::Acquire))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.notifier.unsubscribe(&self.vm, &self.group, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(vm: &str) -> Touched {
        Touched {
            outbox: [vm.to_string()].into(),
            ..Touched::default()
        }
    }

    #[test]
    fn only_the_touched_vms_are_woken() {
        let n = Notifier::new();
        let (web1, web2, db1) = (
            n.subscribe("web1", "prod"),
            n.subscribe("web2", "prod"),
            n.subscribe("db1", "data"),
        );
        assert_eq!(n.wake(&outbox("web1")), 1);
        assert_eq!(
            web1.pending(),
            Wake {
                outbox: true,
                policy: false,
                agent: false,
            }
        );
        assert!(!web2.pending().any() && !db1.pending().any());
        let group = Touched {
            policy_groups: ["prod".to_string()].into(),
            ..Touched::default()
        };
        assert_eq!(n.wake(&group), 2);
        assert!(web2.pending().policy && !db1.pending().any());
        assert_eq!(n.wake(&Touched::everything()), 3);
        assert!(db1.pending().outbox && db1.pending().policy && db1.pending().agent);
        let revoked = Touched {
            agents: ["web2".to_string()].into(),
            ..Touched::default()
        };
        let fresh = n.subscribe("web2", "prod");
        assert_eq!(n.wake(&revoked), 2);
        assert!(fresh.pending().agent && !fresh.pending().outbox);
        assert_eq!(n.wake(&outbox("nobody")), 0);
    }

    #[test]
    fn two_notifiers_are_independent_and_drop_unsubscribes() {
        let (a, b) = (Notifier::new(), Notifier::new());
        assert_ne!(a.origin(), b.origin());
        let (sa, sb) = (a.subscribe("web1", "prod"), b.subscribe("web1", "prod"));
        a.wake(&outbox("web1"));
        assert!(sa.pending().outbox && !sb.pending().any());
        drop(sa);
        assert_eq!(a.wake(&outbox("web1")), 0, "dropped subscriptions are gone");
        assert_eq!(a.wake(&Touched::everything()), 0);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost() {
        let n = Notifier::new();
        let mut s = n.subscribe("web1", "prod");
        n.wake(&outbox("web1"));
        n.wake(&Touched {
            policy_vms: ["web1".to_string()].into(),
            ..Touched::default()
        });
        let w = tokio::time::timeout(std::time::Duration::from_secs(5), s.changed())
            .await
            .expect("pending changes are returned at once");
        assert!(w.outbox && w.policy);
        assert!(!s.pending().any(), "returned changes are cleared");
    }

    #[test]
    fn payloads_round_trip_and_reject_unknown_fields() {
        let t = Touched {
            outbox: ["web1".to_string()].into(),
            policy_groups: ["prod".to_string()].into(),
            ..Touched::default()
        };
        let s = serde_json::to_string(&t).expect("json");
        assert_eq!(s, r#"{"outbox":["web1"],"policyGroups":["prod"]}"#);
        assert_eq!(serde_json::from_str::<Touched>(&s).expect("parse"), t);
        assert!(serde_json::from_str::<Touched>(r#"{"other":1}"#).is_err());
        let big = Touched {
            outbox: (0..1000).map(|i| format!("vm-{i}")).collect(),
            ..Touched::default()
        };
        let p = Notice::payload("c1", &big).expect("payload");
        assert!(p.len() <= MAX_PAYLOAD, "{}", p.len());
        let n: Notice = serde_json::from_str(&p).expect("parse");
        assert_eq!((n.from.as_str(), n.touched), ("c1", Touched::everything()));
    }
}
