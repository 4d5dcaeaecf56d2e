//! The overlap rule, computed in user space: which value each grant-map entry must hold.
//!
//! The kernel does one longest-prefix lookup per packet and gets one entry. For "any covering
//! grant admits" to hold with a single lookup, every entry stores the latest end of all grants
//! on its own prefix AND on every shorter prefix that contains it (same protocol and port).
//! Then the longest matching entry already accounts for every broader grant, and a /32 that
//! ends can never hide a /24 that is still active.
//!
//! `CoverIndex` keeps the grants per prefix and, for each change, returns the map writes that
//! restore that invariant: the changed prefix and every more specific prefix beneath it.

use crate::grant::{GrantId, GrantSpec};
use jitgate_common::{GrantEntry, Port, Protocol, SourcePrefix};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// One map entry's identity: protocol, port and source prefix, ordered so that all prefixes
/// inside a given one form a contiguous range (the address is big-endian bytes, so byte order
/// is numeric order). 22 bytes: the index holds one per grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub proto: Protocol,
    pub port: Port,
    v6: bool,
    addr: [u8; 16],
    len: u8,
}

impl Scope {
    pub fn new(proto: Protocol, port: Port, prefix: &SourcePrefix) -> Self {
        let (v6, addr) = match prefix.addr() {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        Scope {
            proto,
            port,
            v6,
            addr: addr.to_be_bytes(),
            len: prefix.prefix_len(),
        }
    }

    fn max_len(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn addr(&self) -> u128 {
        u128::from_be_bytes(self.addr)
    }

    pub fn prefix(&self) -> SourcePrefix {
        let a = self.addr();
        let addr = if self.v6 {
            IpAddr::V6(a.into())
        } else {
            IpAddr::V4((a as u32).into())
        };
        // Scopes are only built from valid prefixes, and truncation keeps them valid.
        SourcePrefix::host(addr).truncate(self.len)
    }

    fn truncate(&self, len: u8) -> Scope {
        let shift = u32::from(self.max_len() - len);
        let addr = if shift >= 128 {
            0
        } else {
            (self.addr() >> shift) << shift
        };
        Scope {
            addr: addr.to_be_bytes(),
            len,
            ..*self
        }
    }

    /// Last address inside this prefix.
    fn last_addr(&self) -> u128 {
        let host_bits = u32::from(self.max_len() - self.len);
        if host_bits >= 128 {
            u128::MAX
        } else {
            self.addr() | ((1u128 << host_bits) - 1)
        }
    }

    pub fn is_host(&self) -> bool {
        self.len == self.max_len()
    }

    fn bucket(&self) -> (Protocol, Port, bool) {
        (self.proto, self.port, self.v6)
    }
}

/// A write the map writer must perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    Put(Scope, GrantEntry),
    Delete(Scope),
}

#[derive(Clone, Copy, Debug)]
struct Held {
    id: GrantId,
    expires_at_ns: u64,
}

/// The grants on one prefix; almost always exactly one, kept inline.
#[derive(Debug)]
enum HeldSet {
    One(Held),
    Many(Vec<Held>),
}

impl HeldSet {
    fn as_slice(&self) -> &[Held] {
        match self {
            HeldSet::One(h) => std::slice::from_ref(h),
            HeldSet::Many(v) => v,
        }
    }

    fn push(&mut self, h: Held) {
        match self {
            HeldSet::One(first) => *self = HeldSet::Many(vec![*first, h]),
            HeldSet::Many(v) => v.push(h),
        }
    }

    /// Removes `id`; returns whether the set is now empty.
    fn remove(&mut self, id: &GrantId) -> bool {
        match self {
            HeldSet::One(h) => h.id == *id,
            HeldSet::Many(v) => {
                v.retain(|h| h.id != *id);
                let empty = v.is_empty();
                if let [only] = v[..] {
                    *self = HeldSet::One(only);
                }
                empty
            }
        }
    }
}

/// Per prefix: its grants and the value its map entry holds now.
#[derive(Debug)]
struct ScopeState {
    held: HeldSet,
    written: Option<GrantEntry>,
}

/// Grants per prefix, and the value each map entry currently holds.
#[derive(Default)]
pub struct CoverIndex {
    by_id: HashMap<GrantId, (Scope, u64)>,
    by_scope: BTreeMap<Scope, ScopeState>,
    /// How many scopes exist per (protocol, port, family) and prefix length, so that the
    /// ancestor walk only probes lengths that exist.
    lens: HashMap<(Protocol, Port, bool), Box<[u32; 129]>>,
}

impl CoverIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &GrantId) -> bool {
        self.by_id.contains_key(id)
    }

    /// A grant's protocol, port, prefix and end.
    pub fn get(&self, id: &GrantId) -> Option<(GrantSpec, u64)> {
        self.by_id.get(id).map(|(s, exp)| {
            (
                GrantSpec {
                    protocol: s.proto,
                    port: s.port,
                    source: s.prefix(),
                },
                *exp,
            )
        })
    }

    /// Every grant's id, protocol and port.
    pub fn ids(&self) -> impl Iterator<Item = (&GrantId, Protocol, Port)> {
        self.by_id.iter().map(|(id, (s, _))| (id, s.proto, s.port))
    }

    /// Whether any grant on (protocol, port) has a prefix shorter than a host prefix in the
    /// given family, i.e. whether the kernel must consult the LPM trie after a host miss.
    pub fn has_prefix_grants(&self, proto: Protocol, port: Port, v6: bool) -> bool {
        let max = if v6 { 128 } else { 32 };
        self.lens
            .get(&(proto, port, v6))
            .is_some_and(|c| c[..max].iter().any(|&n| n > 0))
    }

    /// Whether any grant on (protocol, port) is for a single host in the given family.
    pub fn has_host_grants(&self, proto: Protocol, port: Port, v6: bool) -> bool {
        let max = if v6 { 128 } else { 32 };
        self.lens
            .get(&(proto, port, v6))
            .is_some_and(|c| c[max] > 0)
    }

    /// The entries the maps must hold, for reconciliation against what is pinned.
    pub fn entries(&self) -> impl Iterator<Item = (&Scope, &GrantEntry)> {
        self.by_scope
            .iter()
            .filter_map(|(s, st)| st.written.as_ref().map(|w| (s, w)))
    }

    /// Adds a grant (or replaces one with the same id) and returns the writes.
    pub fn insert(&mut self, id: GrantId, spec: &GrantSpec, expires_at_ns: u64) -> Vec<MapOp> {
        let mut ops = Vec::new();
        if self.by_id.contains_key(&id) {
            ops.extend(self.remove(&id).unwrap_or_default());
        }
        let scope = Scope::new(spec.protocol, spec.port, &spec.source);
        self.by_id.insert(id, (scope, expires_at_ns));
        let held = Held { id, expires_at_ns };
        match self.by_scope.get_mut(&scope) {
            Some(st) => st.held.push(held),
            None => {
                self.by_scope.insert(
                    scope,
                    ScopeState {
                        held: HeldSet::One(held),
                        written: None,
                    },
                );
                self.lens
                    .entry(scope.bucket())
                    .or_insert_with(|| Box::new([0; 129]))[usize::from(scope.len)] += 1;
            }
        }
        self.refresh_subtree(scope, &mut ops);
        compact(ops)
    }

    /// Removes a grant; returns the writes, or `None` if the id is unknown.
    pub fn remove(&mut self, id: &GrantId) -> Option<Vec<MapOp>> {
        let (scope, _) = self.by_id.remove(id)?;
        let mut ops = Vec::new();
        let mut gone = false;
        if let Some(st) = self.by_scope.get_mut(&scope)
            && st.held.remove(id)
        {
            gone = true;
            if st.written.is_some() {
                ops.push(MapOp::Delete(scope));
            }
        }
        if gone {
            self.by_scope.remove(&scope);
            if let Some(l) = self.lens.get_mut(&scope.bucket()) {
                l[usize::from(scope.len)] -= 1;
            }
        }
        self.refresh_subtree(scope, &mut ops);
        Some(compact(ops))
    }

    /// Recomputes `scope` and every more specific scope beneath it.
    fn refresh_subtree(&mut self, scope: Scope, ops: &mut Vec<MapOp>) {
        let lo = Scope { len: 0, ..scope };
        let hi = Scope {
            addr: scope.last_addr().to_be_bytes(),
            len: u8::MAX,
            ..scope
        };
        let affected: Vec<Scope> = self
            .by_scope
            .range(lo..=hi)
            .map(|(s, _)| *s)
            .filter(|s| s.len >= scope.len)
            .collect();
        for s in affected {
            let Some(want) = self.effective(&s) else {
                continue;
            };
            if let Some(st) = self.by_scope.get_mut(&s)
                && st.written != Some(want)
            {
                st.written = Some(want);
                ops.push(MapOp::Put(s, want));
            }
        }
    }

    /// The value for `scope`'s entry: the latest end among grants on it and on every prefix
    /// containing it. `None` when no grant sits on `scope` itself (no entry needed).
    fn effective(&self, scope: &Scope) -> Option<GrantEntry> {
        let own = self.by_scope.get(scope)?;
        let mut best = best_of(own.held.as_slice(), None);
        if let Some(counts) = self.lens.get(&scope.bucket()) {
            for l in 0..scope.len {
                if counts[usize::from(l)] == 0 {
                    continue;
                }
                if let Some(st) = self.by_scope.get(&scope.truncate(l)) {
                    best = best_of(st.held.as_slice(), best);
                }
            }
        }
        best.map(|h| GrantEntry {
            expires_at_ns: h.expires_at_ns,
            grant_id: h.id.to_bytes(),
        })
    }
}

fn best_of(held: &[Held], mut best: Option<Held>) -> Option<Held> {
    for h in held {
        let better = match best {
            None => true,
            Some(b) => (h.expires_at_ns, h.id) > (b.expires_at_ns, b.id),
        };
        if better {
            best = Some(*h);
        }
    }
    best
}

/// Keeps the last op per scope (a remove followed by an insert of the same scope).
fn compact(ops: Vec<MapOp>) -> Vec<MapOp> {
    if ops.len() < 2 {
        return ops;
    }
    let mut last: HashMap<Scope, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let s = match op {
            MapOp::Put(s, _) | MapOp::Delete(s) => *s,
        };
        last.insert(s, i);
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| {
            let s = match op {
                MapOp::Put(s, _) | MapOp::Delete(s) => s,
            };
            last.get(s) == Some(i)
        })
        .map(|(_, op)| op)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(src: &str) -> GrantSpec {
        GrantSpec {
            protocol: Protocol::Tcp,
            port: Port::new(22).unwrap(),
            source: src.parse().unwrap(),
        }
    }

    fn id(n: u8) -> GrantId {
        GrantId::from_bytes([n; 16])
    }

    /// Reference: for an address, is any grant covering it active at `now`?
    fn model_admits(grants: &[(GrantSpec, u64)], addr: IpAddr, now: u64) -> bool {
        grants
            .iter()
            .any(|(s, e)| s.source.contains_addr(addr) && now < *e)
    }

    /// What a longest-prefix lookup over the written entries answers.
    fn lookup_admits(idx: &CoverIndex, addr: IpAddr, now: u64) -> bool {
        let host = Scope::new(
            Protocol::Tcp,
            Port::new(22).unwrap(),
            &SourcePrefix::host(addr),
        );
        let mut best: Option<(&Scope, &GrantEntry)> = None;
        for (s, e) in idx.entries() {
            if s.v6 == host.v6
                && host.truncate(s.len) == *s
                && best.is_none_or(|(b, _)| s.len > b.len)
            {
                best = Some((s, e));
            }
        }
        best.is_some_and(|(_, e)| now < e.expires_at_ns)
    }

    #[test]
    fn host_inside_prefix_keeps_broader_expiry() {
        let mut idx = CoverIndex::new();
        idx.insert(id(1), &spec("203.0.113.0/24"), 1000);
        let ops = idx.insert(id(2), &spec("203.0.113.9"), 100);
        // The /32 entry carries the /24's later end.
        assert!(
            matches!(&ops[..], [MapOp::Put(_, e)] if e.expires_at_ns == 1000 && e.grant_id == [1;16])
        );
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(lookup_admits(&idx, a, 500));
        assert!(!lookup_admits(&idx, a, 1000));
    }

    #[test]
    fn removing_broad_grant_lowers_descendants() {
        let mut idx = CoverIndex::new();
        idx.insert(id(1), &spec("203.0.113.0/24"), 1000);
        idx.insert(id(2), &spec("203.0.113.9"), 100);
        let ops = idx.remove(&id(1)).unwrap();
        assert_eq!(ops.len(), 2, "{ops:?}");
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(lookup_admits(&idx, a, 50));
        assert!(!lookup_admits(&idx, a, 500));
        let b: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(!lookup_admits(&idx, b, 50));
        assert!(idx.remove(&id(1)).is_none());
        idx.remove(&id(2));
        assert_eq!(idx.entries().count(), 0);
    }

    #[test]
    fn same_prefix_keeps_latest_and_removal_restores_other() {
        let mut idx = CoverIndex::new();
        idx.insert(id(1), &spec("2001:db8::/32"), 100);
        idx.insert(id(2), &spec("2001:db8::/32"), 300);
        let a: IpAddr = "2001:db8::5".parse().unwrap();
        assert!(lookup_admits(&idx, a, 200));
        idx.remove(&id(2));
        assert!(!lookup_admits(&idx, a, 200));
        assert!(lookup_admits(&idx, a, 50));
    }

    /// Random grants and removals; after each step the single-lookup answer equals the
    /// "any covering active grant" reference for many addresses and times.
    #[test]
    fn matches_reference_model() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut idx = CoverIndex::new();
        let mut live: Vec<(GrantId, GrantSpec, u64)> = Vec::new();
        for step in 0..400u32 {
            if live.len() > 3 && next() % 3 == 0 {
                let i = (next() as usize) % live.len();
                let (gid, _, _) = live.swap_remove(i);
                idx.remove(&gid).unwrap();
            } else {
                let len = [0u8, 8, 16, 24, 28, 30, 32][(next() % 7) as usize];
                let host = u32::from_be_bytes([198, 51, 100, (next() % 8) as u8]);
                let p = SourcePrefix::host(IpAddr::V4(host.into())).truncate(len);
                let g = GrantSpec {
                    protocol: Protocol::Tcp,
                    port: Port::new(22).unwrap(),
                    source: p,
                };
                let gid = GrantId::from_bytes((step as u128 + 1).to_be_bytes());
                let exp = next() % 1000;
                idx.insert(gid, &g, exp);
                live.push((gid, g, exp));
            }
            let model: Vec<(GrantSpec, u64)> =
                live.iter().map(|(_, s, e)| (s.clone(), *e)).collect();
            for last in 0..8u8 {
                let a = IpAddr::V4([198, 51, 100, last].into());
                for now in [0u64, 250, 500, 750, 999] {
                    assert_eq!(
                        lookup_admits(&idx, a, now),
                        model_admits(&model, a, now),
                        "step {step} addr {a} now {now}"
                    );
                }
            }
        }
    }
}
