//! Connection limits (`JG_CONN_LIMIT`): grants that admit only their first N new flows.
//!
//! The kernel takes a slot per new flow with an atomic fetch-and-add on the grant's entry
//! (`ConnLimit`). User space writes an entry once, when the grant is first applied, with
//! `BPF_NOEXIST`: a grant applied again (an agent restart replaying its journal, a
//! controller resend) keeps the count the kernel has. An entry is deleted only after every
//! grant-map entry naming the grant is gone, and the slot's `LIMITED` bit is set before the
//! grant's entries are written and cleared after they are deleted, so the kernel never sees
//! a limited grant without its limit.

use crate::error::Error;
use crate::grant::GrantId;
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use jitgate_common::{ConnLimit, MaxConnections, names};
use std::collections::HashMap;

/// BPF_NOEXIST: create only.
const BPF_NOEXIST: u64 = 1;

pub(super) struct ConnLimits {
    map: BpfHashMap<MapData, [u8; 16], ConnLimit>,
    /// The limited grants this process knows, with their `JG_PROTECTED` slot.
    grants: HashMap<GrantId, (u32, MaxConnections)>,
}

impl ConnLimits {
    pub(super) fn new(map: BpfHashMap<MapData, [u8; 16], ConnLimit>) -> Self {
        ConnLimits {
            map,
            grants: HashMap::new(),
        }
    }

    /// Records `id`'s limit and creates its counter unless the map already has one (the
    /// count of an earlier application of the same grant is kept).
    pub(super) fn install(
        &mut self,
        id: GrantId,
        slot: u32,
        limit: MaxConnections,
    ) -> Result<(), Error> {
        let value = ConnLimit {
            limit: u64::from(limit.get()),
            taken: 0,
        };
        match self.map.insert(id.to_bytes(), value, BPF_NOEXIST) {
            Ok(()) => {}
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(Error::map(names::CONN_LIMIT)(e)),
        }
        self.grants.insert(id, (slot, limit));
        Ok(())
    }

    /// Forgets `id` and deletes its counter. Call only after its grant-map entries are gone.
    /// Returns the slot it was on, if it was limited.
    pub(super) fn forget(&mut self, id: &GrantId) -> Result<Option<u32>, Error> {
        let Some((slot, _)) = self.grants.remove(id) else {
            return Ok(None);
        };
        match self.map.remove(&id.to_bytes()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(Some(slot)),
            Err(e) => Err(Error::map(names::CONN_LIMIT)(e)),
        }
    }

    /// Forgets every grant (their counters stay): the start of a reconciliation.
    pub(super) fn reset(&mut self) {
        self.grants.clear();
    }

    /// Whether some limited grant is on `slot`.
    pub(super) fn on_slot(&self, slot: u32) -> bool {
        self.grants.values().any(|(s, _)| *s == slot)
    }

    /// The slots of every limited grant.
    pub(super) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.grants.values().map(|(s, _)| *s)
    }

    /// The kernel's count for `id`, if it is limited.
    pub(super) fn usage(&self, id: &GrantId) -> Option<ConnLimit> {
        self.grants.get(id)?;
        self.map.get(&id.to_bytes(), 0).ok()
    }

    /// Deletes every counter of a grant this process does not know (ones left pinned by an
    /// earlier agent for grants that have since gone). Call after the grant maps are pruned.
    pub(super) fn prune(&mut self) {
        let stale: Vec<[u8; 16]> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.grants.contains_key(&GrantId::from_bytes(*k)))
            .collect();
        for k in stale {
            let _ = self.map.remove(&k);
        }
    }
}
