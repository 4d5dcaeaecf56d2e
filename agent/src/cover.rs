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
//!
//! Layout (it holds one node per grant, so a million grants must stay small): the grants are
//! nodes in a slab found by id; per (protocol, port, family) an ordered map from (address,
//! length) to the first node on that prefix (the others are chained) and the node whose
//! end the map entry holds. IPv4 keys are 5 bytes, not 17.

use crate::grant::{GrantId, GrantSpec};
use crate::slab::{Keyed, KeyedSlab, NONE};
use jitgate_common::{GrantEntry, Port, Protocol, SourcePrefix};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// One map entry's identity: protocol, port and source prefix, ordered so that all prefixes
/// inside a given one form a contiguous range (the address is big-endian bytes, so byte order
/// is numeric order).
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

/// A grant: the value its prefix's entry holds when it is the best cover, its prefix, and
/// the next grant on the same prefix.
#[derive(Debug)]
struct Node {
    entry: GrantEntry,
    scope: Scope,
    next: u32,
}

impl Keyed for Node {
    type Key = [u8; 16];
    fn key(&self) -> &[u8; 16] {
        &self.entry.grant_id
    }
}

/// Per prefix: the first of its grants, and the node whose entry the map holds now
/// ([`NONE`] until the first write).
#[derive(Clone, Copy, Debug)]
struct Slots {
    first: u32,
    written: u32,
}

/// The low `N` bytes of the address (4 for IPv4) and the prefix length.
type Key<const N: usize> = ([u8; N], u8);

fn key<const N: usize>(addr: [u8; 16], len: u8) -> Key<N> {
    let mut a = [0u8; N];
    a.copy_from_slice(&addr[16 - N..]);
    (a, len)
}

/// The prefixes of one (protocol, port, family), in address order.
enum Tree {
    V4(BTreeMap<Key<4>, Slots>),
    V6(BTreeMap<Key<16>, Slots>),
}

/// Scopes of the keys in `t` at or beneath `s`.
fn beneath<const N: usize>(t: &BTreeMap<Key<N>, Slots>, s: &Scope) -> Vec<Scope> {
    let lo = key::<N>(s.addr, 0);
    let hi = key::<N>(s.last_addr().to_be_bytes(), u8::MAX);
    t.range(lo..=hi)
        .filter(|((_, len), _)| *len >= s.len)
        .map(|((a, len), _)| {
            let mut addr = [0u8; 16];
            addr[16 - N..].copy_from_slice(a);
            Scope {
                addr,
                len: *len,
                ..*s
            }
        })
        .collect()
}

impl Tree {
    fn new(v6: bool) -> Tree {
        if v6 {
            Tree::V6(BTreeMap::new())
        } else {
            Tree::V4(BTreeMap::new())
        }
    }

    fn get(&self, s: &Scope) -> Option<Slots> {
        match self {
            Tree::V4(t) => t.get(&key(s.addr, s.len)).copied(),
            Tree::V6(t) => t.get(&key(s.addr, s.len)).copied(),
        }
    }

    fn get_mut(&mut self, s: &Scope) -> Option<&mut Slots> {
        match self {
            Tree::V4(t) => t.get_mut(&key(s.addr, s.len)),
            Tree::V6(t) => t.get_mut(&key(s.addr, s.len)),
        }
    }

    fn insert(&mut self, s: &Scope, v: Slots) {
        match self {
            Tree::V4(t) => t.insert(key(s.addr, s.len), v),
            Tree::V6(t) => t.insert(key(s.addr, s.len), v),
        };
    }

    fn remove(&mut self, s: &Scope) {
        match self {
            Tree::V4(t) => t.remove(&key(s.addr, s.len)),
            Tree::V6(t) => t.remove(&key(s.addr, s.len)),
        };
    }

    /// `s` (if present) and every more specific prefix inside it.
    fn subtree(&self, s: &Scope) -> Vec<Scope> {
        match self {
            Tree::V4(t) => beneath(t, s),
            Tree::V6(t) => beneath(t, s),
        }
    }

    fn values(&self) -> Box<dyn Iterator<Item = &Slots> + '_> {
        match self {
            Tree::V4(t) => Box::new(t.values()),
            Tree::V6(t) => Box::new(t.values()),
        }
    }

    fn values_mut(&mut self) -> Box<dyn Iterator<Item = &mut Slots> + '_> {
        match self {
            Tree::V4(t) => Box::new(t.values_mut()),
            Tree::V6(t) => Box::new(t.values_mut()),
        }
    }
}

struct Bucket {
    tree: Tree,
    /// How many prefixes exist per length, so that the ancestor walk only probes lengths
    /// that exist.
    lens: [u32; 129],
}

/// Grants per prefix, and the value each map entry currently holds.
#[derive(Default)]
pub struct CoverIndex {
    nodes: KeyedSlab<Node>,
    buckets: HashMap<(Protocol, Port, bool), Bucket>,
}

impl CoverIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, id: &GrantId) -> bool {
        self.nodes.contains(&id.to_bytes())
    }

    /// A grant's protocol, port, prefix and end.
    pub fn get(&self, id: &GrantId) -> Option<(GrantSpec, u64)> {
        self.nodes.get(&id.to_bytes()).map(|(_, n)| {
            (
                GrantSpec {
                    protocol: n.scope.proto,
                    port: n.scope.port,
                    source: n.scope.prefix(),
                },
                n.entry.expires_at_ns,
            )
        })
    }

    /// Every grant's id, protocol and port.
    pub fn ids(&self) -> impl Iterator<Item = (GrantId, Protocol, Port)> {
        self.nodes.iter().map(|(_, n)| {
            (
                GrantId::from_bytes(n.entry.grant_id),
                n.scope.proto,
                n.scope.port,
            )
        })
    }

    /// Whether any grant on (protocol, port) has a prefix shorter than a host prefix in the
    /// given family, i.e. whether the kernel must consult the LPM trie after a host miss.
    pub fn has_prefix_grants(&self, proto: Protocol, port: Port, v6: bool) -> bool {
        let max = if v6 { 128 } else { 32 };
        self.buckets
            .get(&(proto, port, v6))
            .is_some_and(|b| b.lens[..max].iter().any(|&n| n > 0))
    }

    /// Whether any grant on (protocol, port) is for a single host in the given family.
    pub fn has_host_grants(&self, proto: Protocol, port: Port, v6: bool) -> bool {
        let max = if v6 { 128 } else { 32 };
        self.buckets
            .get(&(proto, port, v6))
            .is_some_and(|b| b.lens[max] > 0)
    }

    /// The entries the maps must hold, for reconciliation against what is pinned.
    pub fn entries(&self) -> impl Iterator<Item = (&Scope, &GrantEntry)> {
        self.buckets
            .values()
            .flat_map(|b| b.tree.values())
            .filter_map(|sl| {
                let scope = &self.nodes.slot(sl.first)?.scope;
                let entry = &self.nodes.slot(sl.written)?.entry;
                Some((scope, entry))
            })
    }

    /// Adds a grant (or replaces one with the same id) and returns the writes.
    pub fn insert(&mut self, id: GrantId, spec: &GrantSpec, expires_at_ns: u64) -> Vec<MapOp> {
        let mut ops = Vec::new();
        if self.contains(&id) {
            ops.extend(self.remove(&id).unwrap_or_default());
        }
        let scope = Scope::new(spec.protocol, spec.port, &spec.source);
        let node = Node {
            entry: GrantEntry {
                expires_at_ns,
                grant_id: id.to_bytes(),
            },
            scope,
            next: NONE,
        };
        // The id is absent (removed above), so the slab takes the node.
        let Ok(slot) = self.nodes.insert(node) else {
            return compact(ops);
        };
        let bucket = self
            .buckets
            .entry(scope.bucket())
            .or_insert_with(|| Bucket {
                tree: Tree::new(scope.v6),
                lens: [0; 129],
            });
        match bucket.tree.get_mut(&scope) {
            Some(sl) => {
                if let Some(n) = self.nodes.slot_mut(slot) {
                    n.next = sl.first;
                }
                sl.first = slot;
            }
            None => {
                bucket.tree.insert(
                    &scope,
                    Slots {
                        first: slot,
                        written: NONE,
                    },
                );
                bucket.lens[usize::from(scope.len)] += 1;
            }
        }
        self.refresh_subtree(&scope, &mut ops);
        compact(ops)
    }

    /// Removes a grant; returns the writes, or `None` if the id is unknown.
    pub fn remove(&mut self, id: &GrantId) -> Option<Vec<MapOp>> {
        let (slot, node) = self.nodes.get(&id.to_bytes())?;
        let (scope, after) = (node.scope, node.next);
        let mut ops = Vec::new();
        if let Some(bucket) = self.buckets.get_mut(&scope.bucket())
            && let Some(sl) = bucket.tree.get_mut(&scope)
        {
            // Unlink the node from its prefix's chain.
            if sl.first == slot {
                sl.first = after;
            } else {
                let mut cur = sl.first;
                while let Some(n) = self.nodes.slot_mut(cur) {
                    if n.next == slot {
                        n.next = after;
                        break;
                    }
                    cur = n.next;
                }
            }
            if sl.first == NONE {
                if sl.written != NONE {
                    ops.push(MapOp::Delete(scope));
                }
                bucket.tree.remove(&scope);
                let n = &mut bucket.lens[usize::from(scope.len)];
                *n = n.saturating_sub(1);
            }
        }
        // The node is freed only now: entries that held it are compared against it first.
        self.refresh_subtree(&scope, &mut ops);
        self.nodes.remove_slot(slot);
        if self
            .buckets
            .get(&scope.bucket())
            .is_some_and(|b| b.lens.iter().all(|&n| n == 0))
        {
            self.buckets.remove(&scope.bucket());
        }
        if self.nodes.is_sparse() {
            self.compact_nodes();
        }
        Some(compact(ops))
    }

    /// Moves the nodes to the front of the slab and follows them everywhere they are named.
    fn compact_nodes(&mut self) {
        let moved = self.nodes.compact();
        let to = |s: u32| -> u32 { moved.get(s as usize).copied().unwrap_or(NONE) };
        for b in self.buckets.values_mut() {
            for sl in b.tree.values_mut() {
                sl.first = to(sl.first);
                sl.written = to(sl.written);
            }
        }
        for slot in 0..self.nodes.len() as u32 {
            if let Some(n) = self.nodes.slot_mut(slot) {
                n.next = to(n.next);
            }
        }
    }

    /// Recomputes `scope` and every more specific scope beneath it.
    fn refresh_subtree(&mut self, scope: &Scope, ops: &mut Vec<MapOp>) {
        let Some(bucket) = self.buckets.get(&scope.bucket()) else {
            return;
        };
        for s in bucket.tree.subtree(scope) {
            let Some(want) = self.effective(&s) else {
                continue;
            };
            let Some(entry) = self.nodes.slot(want).map(|n| n.entry) else {
                continue;
            };
            let Some(sl) = self
                .buckets
                .get_mut(&s.bucket())
                .and_then(|b| b.tree.get_mut(&s))
            else {
                continue;
            };
            let held = self.nodes.slot(sl.written).map(|n| n.entry);
            if held != Some(entry) {
                sl.written = want;
                ops.push(MapOp::Put(s, entry));
            }
        }
    }

    /// The node whose value `scope`'s entry must hold: the latest end among grants on it and
    /// on every prefix containing it. `None` when no grant sits on `scope` itself (no entry
    /// needed).
    fn effective(&self, scope: &Scope) -> Option<u32> {
        let bucket = self.buckets.get(&scope.bucket())?;
        let own = bucket.tree.get(scope)?;
        let mut best = self.best_of(own.first, NONE);
        for l in 0..scope.len {
            if bucket.lens[usize::from(l)] == 0 {
                continue;
            }
            if let Some(sl) = bucket.tree.get(&scope.truncate(l)) {
                best = self.best_of(sl.first, best);
            }
        }
        (best != NONE).then_some(best)
    }

    /// The later (end, then id) of `best` and every node in the chain from `first`.
    fn best_of(&self, first: u32, mut best: u32) -> u32 {
        let rank = |s: u32| {
            self.nodes
                .slot(s)
                .map(|n| (n.entry.expires_at_ns, n.entry.grant_id))
        };
        let mut cur = first;
        while let Some(n) = self.nodes.slot(cur) {
            if rank(best).is_none_or(|b| (n.entry.expires_at_ns, n.entry.grant_id) > b) {
                best = cur;
            }
            cur = n.next;
        }
        best
    }
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

    /// One node per grant: the memory bound of the agent rests on its size.
    #[test]
    fn a_node_is_56_bytes() {
        assert!(
            std::mem::size_of::<Node>() <= 56,
            "{}",
            std::mem::size_of::<Node>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Node>>(),
            std::mem::size_of::<Node>()
        );
    }

    /// Thousands of grants, most then removed (the slab compacts and every slot it names is
    /// renumbered): the single lookup still agrees with the reference, in both families.
    #[test]
    fn compaction_keeps_the_answers() {
        let mut idx = CoverIndex::new();
        let mut live: Vec<(GrantId, GrantSpec, u64)> = Vec::new();
        for i in 0..6000u32 {
            let (src, v6) = if i % 3 == 0 {
                (format!("2001:db8::{:x}", i % 64), true)
            } else {
                (format!("198.51.100.{}", i % 64), false)
            };
            let len = match (i % 7, v6) {
                (0, false) => 26,
                (0, true) => 120,
                (1, false) => 0,
                _ => {
                    if v6 {
                        128
                    } else {
                        32
                    }
                }
            };
            let p: SourcePrefix = src.parse().unwrap();
            let g = GrantSpec {
                protocol: Protocol::Tcp,
                port: Port::new(22).unwrap(),
                source: p.truncate(len),
            };
            let gid = GrantId::from_bytes((u128::from(i) + 1).to_be_bytes());
            let exp = u64::from(i * 7919 % 1000);
            idx.insert(gid, &g, exp);
            live.push((gid, g, exp));
        }
        let mut kept = Vec::new();
        for (n, (gid, g, e)) in live.into_iter().enumerate() {
            if n % 9 == 0 {
                kept.push((g, e));
            } else {
                idx.remove(&gid).unwrap();
            }
        }
        assert_eq!(idx.len(), kept.len());
        assert!(!idx.nodes.is_sparse());
        for last in 0..64u8 {
            for a in [
                IpAddr::V4([198, 51, 100, last].into()),
                format!("2001:db8::{last:x}").parse().unwrap(),
            ] {
                for now in [0u64, 333, 666, 999] {
                    let admits = lookup_admits(&idx, a, now);
                    assert_eq!(admits, model_admits(&kept, a, now), "{a} at {now}");
                }
            }
        }
    }
}
