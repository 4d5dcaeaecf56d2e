//! Booked grants waiting for their start.
//!
//! A booked grant stays out of the kernel maps until it opens: the maps store, per source,
//! the latest end of the grants that cover it, so an early entry would admit early. The
//! daemon's timer opens each booking when [`Schedule::next_opening`] comes due; the journal
//! holds bookings as their own record kind, so they survive restarts still waiting.

use crate::clock::BootInstant;
use crate::grant::{GrantId, GrantRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Bookings further ahead than this are refused: the controller books at most seven days
/// ahead; the margin absorbs clock offsets and transit.
pub const MAX_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600 + 3600);

/// A booked grant: the grant as it will be applied, and when it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Booking {
    /// `start` is the booked start; `expires_boot_ns` the end on the boot clock, fixed at
    /// receipt like any grant's.
    pub grant: GrantRecord,
    /// The opening on CLOCK_BOOTTIME of `grant.boot_id`: the later of the wall-clock start
    /// and receipt + the time to the start the controller counted.
    pub opens_boot_ns: u64,
    /// The controller's seq of the booking (its `GrantResult`s name it).
    pub seq: u64,
}

impl Booking {
    /// The opening on this boot's clock: the recorded one within the same boot, else (after
    /// a reboot) the wall-clock start converted now.
    pub fn opens(&self, boot_id: &str) -> BootInstant {
        if *self.grant.boot_id == *boot_id {
            BootInstant(self.opens_boot_ns)
        } else {
            BootInstant::from_utc(self.grant.start.into())
        }
    }

    /// The same booking pinned to this boot's clock (after a reboot).
    pub fn rebased(mut self, boot_id: &Arc<str>) -> Booking {
        if *self.grant.boot_id != **boot_id {
            self.opens_boot_ns = self.opens(boot_id).0;
            self.grant.expires_boot_ns = self.grant.expires(boot_id).0;
            self.grant.boot_id = boot_id.clone();
        }
        self
    }
}

/// The bookings of this boot, by id and by opening.
#[derive(Default)]
pub struct Schedule {
    by_id: BTreeMap<GrantId, Booking>,
    by_opening: BTreeSet<(u64, GrantId)>,
}

impl Schedule {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &GrantId) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &GrantId) -> Option<&Booking> {
        self.by_id.get(id)
    }

    /// Every booking, earliest opening first.
    pub fn iter(&self) -> impl Iterator<Item = &Booking> {
        self.by_opening
            .iter()
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Adds a booking of this boot; a booking with the same id is replaced.
    pub fn insert(&mut self, b: Booking) {
        self.remove(&b.grant.id);
        self.by_opening.insert((b.opens_boot_ns, b.grant.id));
        self.by_id.insert(b.grant.id, b);
    }

    pub fn remove(&mut self, id: &GrantId) -> Option<Booking> {
        let b = self.by_id.remove(id)?;
        self.by_opening.remove(&(b.opens_boot_ns, b.grant.id));
        Some(b)
    }

    /// The earliest opening, on CLOCK_BOOTTIME.
    pub fn next_opening(&self) -> Option<u64> {
        self.by_opening.first().map(|(t, _)| *t)
    }

    /// Takes out every booking that opens at or before `now_ns`, earliest first.
    pub fn take_due(&mut self, now_ns: u64) -> Vec<Booking> {
        let mut due = Vec::new();
        while let Some(&(t, id)) = self.by_opening.first() {
            if t > now_ns {
                break;
            }
            self.by_opening.pop_first();
            if let Some(b) = self.by_id.remove(&id) {
                due.push(b);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::grant;

    fn booking(n: u8, opens: u64) -> Booking {
        let mut g = grant(n);
        g.boot_id = Arc::from("b");
        Booking {
            grant: g,
            opens_boot_ns: opens,
            seq: u64::from(n),
        }
    }

    #[test]
    fn opens_in_order_and_removal_is_final() {
        let mut s = Schedule::default();
        s.insert(booking(1, 30));
        s.insert(booking(2, 10));
        s.insert(booking(3, 20));
        assert_eq!(s.next_opening(), Some(10));
        assert!(s.remove(&grant(3).id).is_some());
        assert_eq!(
            s.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![2, 1],
            "earliest first"
        );
        assert!(s.take_due(9).is_empty());
        let due = s.take_due(30);
        assert_eq!(due.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![2, 1]);
        assert!(s.is_empty());
        assert_eq!(s.next_opening(), None);
        // Re-inserting the same id moves it; it never opens twice.
        s.insert(booking(4, 50));
        s.insert(booking(4, 5));
        assert_eq!(s.len(), 1);
        assert_eq!(s.take_due(5).len(), 1);
        assert!(s.take_due(u64::MAX).is_empty());
    }

    #[test]
    fn after_a_reboot_it_opens_by_the_wall_clock() {
        let b = booking(1, 7);
        assert_eq!(b.opens("b"), BootInstant(7));
        // grant(1) starts at the epoch: long past on any boot's clock.
        let other: Arc<str> = Arc::from("c");
        let r = b.rebased(&other);
        assert_eq!(&*r.grant.boot_id, "c");
        assert!(BootInstant(r.opens_boot_ns) <= BootInstant::now());
    }
}
