//! The grant table: every grant the agent holds, in a form that stays small at a million
//! grants, and the questions the daemon asks of it (by id, by deadline, and which grant
//! covers a source).
//!
//! A grant is one fixed-size row (72 bytes): times as nanoseconds, requester and
//! justification as handles to interned texts, no per-grant heap allocation. Rows sit in a
//! slab; an id index and a (protocol, port, prefix) index hold 4-byte slots. Deadlines are a
//! heap of (end, slot) pairs; a removed grant's entry stays until it comes up and is then
//! recognised as stale (its slot is empty or holds a grant with another end), so removal
//! never searches the heap.
//!
//! Every row belongs to this kernel boot: `expires_boot_ns` is on this boot's
//! CLOCK_BOOTTIME, and records from an earlier boot are converted before they are inserted.

use crate::grant::{GrantId, GrantRecord, GrantSpec, Origin};
use crate::intern::{Interner, Sym};
use crate::slab::{Keyed, KeyedSlab};
use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use jitgate_common::{MaxConnections, Port, Protocol, SourcePrefix};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Clone, Copy, Debug)]
struct Row {
    id: GrantId,
    expires_boot_ns: u64,
    /// UTC, nanoseconds since the Unix epoch.
    start_ns: i64,
    end_ns: i64,
    requester: Sym,
    justification: Sym,
    source: SourcePrefix,
    protocol: Protocol,
    port: Port,
    origin: Origin,
    max_connections: Option<MaxConnections>,
}

impl Keyed for Row {
    type Key = GrantId;
    fn key(&self) -> &GrantId {
        &self.id
    }
}

/// Grants per prefix length, per (protocol, port, IPv6): the covering query probes only the
/// lengths that have one.
type Lens = Box<[u32; 129]>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("grant {0} is already in the table")]
    Duplicate(GrantId),
    #[error("grant {0}: its start or end lies outside the years 1678-2261")]
    OutOfRange(GrantId),
}

pub struct GrantTable {
    boot_id: Arc<str>,
    rows: KeyedSlab<Row>,
    /// Slots by (protocol, port, source); one scope may hold several grants.
    by_scope: HashTable<u32>,
    scope_hasher: DefaultHashBuilder,
    lens: HashMap<(Protocol, Port, bool), Lens>,
    /// (end on CLOCK_BOOTTIME, slot); entries of removed grants are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(u64, u32)>>,
    requesters: Interner,
    justifications: Interner,
}

fn nanos(t: OffsetDateTime) -> Option<i64> {
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

fn utc(ns: i64) -> OffsetDateTime {
    // Every i64 of nanoseconds is a valid time (years 1677-2262).
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn scope_hash(
    h: &DefaultHashBuilder,
    protocol: Protocol,
    port: Port,
    source: &SourcePrefix,
) -> u64 {
    h.hash_one((protocol, port, source))
}

/// Whether `t` is a time the table can hold.
pub fn representable(t: OffsetDateTime) -> bool {
    nanos(t).is_some()
}

impl GrantTable {
    /// An empty table for the kernel boot `boot_id`.
    pub fn new(boot_id: Arc<str>) -> Self {
        GrantTable {
            boot_id,
            rows: KeyedSlab::default(),
            by_scope: HashTable::new(),
            scope_hasher: DefaultHashBuilder::default(),
            lens: HashMap::new(),
            deadlines: BinaryHeap::new(),
            requesters: Interner::default(),
            justifications: Interner::default(),
        }
    }

    pub fn boot_id(&self) -> &Arc<str> {
        &self.boot_id
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn contains(&self, id: &GrantId) -> bool {
        self.rows.contains(id)
    }

    pub fn get(&self, id: &GrantId) -> Option<Grant<'_>> {
        self.rows.get(id).map(|(_, row)| Grant { table: self, row })
    }

    /// Every grant, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = Grant<'_>> {
        self.rows.iter().map(|(_, row)| Grant { table: self, row })
    }

    /// Adds a grant of this boot (its `boot_id` is taken to be the table's). A grant whose id
    /// is present, or whose times cannot be held, changes nothing.
    pub fn insert(&mut self, g: &GrantRecord) -> Result<(), TableError> {
        let (Some(start_ns), Some(end_ns)) = (nanos(g.start), nanos(g.end)) else {
            return Err(TableError::OutOfRange(g.id));
        };
        if self.rows.contains(&g.id) {
            return Err(TableError::Duplicate(g.id));
        }
        let row = Row {
            id: g.id,
            expires_boot_ns: g.expires_boot_ns,
            start_ns,
            end_ns,
            requester: self.requesters.intern(&g.requester),
            justification: self.justifications.intern(&g.justification),
            source: g.source,
            protocol: g.protocol,
            port: g.port,
            origin: g.origin,
            max_connections: g.max_connections,
        };
        let slot = match self.rows.insert(row) {
            Ok(slot) => slot,
            Err(row) => {
                self.release(&row);
                return Err(TableError::Duplicate(g.id));
            }
        };
        let (rows, hasher) = (&self.rows, &self.scope_hasher);
        self.by_scope.insert_unique(
            scope_hash(hasher, g.protocol, g.port, &g.source),
            slot,
            |&s| {
                rows.slot(s)
                    .map_or(0, |r| scope_hash(hasher, r.protocol, r.port, &r.source))
            },
        );
        let lens = self
            .lens
            .entry((g.protocol, g.port, !g.source.is_ipv4()))
            .or_insert_with(|| Box::new([0; 129]));
        lens[usize::from(g.source.prefix_len())] += 1;
        self.deadlines.push(Reverse((g.expires_boot_ns, slot)));
        Ok(())
    }

    /// Removes a grant; returns it.
    pub fn remove(&mut self, id: &GrantId) -> Option<GrantRecord> {
        let (slot, _) = self.rows.get(id)?;
        self.remove_slot(slot)
    }

    fn remove_slot(&mut self, slot: u32) -> Option<GrantRecord> {
        let row = *self.rows.slot(slot)?;
        let record = Grant {
            table: self,
            row: &row,
        }
        .record();
        let hash = scope_hash(&self.scope_hasher, row.protocol, row.port, &row.source);
        if let Ok(e) = self.by_scope.find_entry(hash, |&s| s == slot) {
            e.remove();
        }
        self.rows.remove_slot(slot);
        let family = (row.protocol, row.port, !row.source.is_ipv4());
        if let Some(lens) = self.lens.get_mut(&family) {
            let n = &mut lens[usize::from(row.source.prefix_len())];
            *n = n.saturating_sub(1);
            if lens.iter().all(|&n| n == 0) {
                self.lens.remove(&family);
            }
        }
        self.release(&row);
        self.tidy();
        Some(record)
    }

    fn release(&mut self, row: &Row) {
        self.requesters.release(row.requester);
        self.justifications.release(row.justification);
    }

    /// After removals: compacts the rows when most slots are free, and drops stale deadline
    /// entries when they outnumber the live ones.
    fn tidy(&mut self) {
        if self.rows.is_sparse() {
            self.rows.compact();
            let mut by_scope = HashTable::with_capacity(self.rows.len());
            let hasher = &self.scope_hasher;
            for (slot, r) in self.rows.iter() {
                by_scope.insert_unique(
                    scope_hash(hasher, r.protocol, r.port, &r.source),
                    slot,
                    |&s| {
                        self.rows
                            .slot(s)
                            .map_or(0, |r| scope_hash(hasher, r.protocol, r.port, &r.source))
                    },
                );
            }
            self.by_scope = by_scope;
            self.rebuild_deadlines();
        } else if self.deadlines.len() > 2 * self.rows.len() + 1024 {
            self.rebuild_deadlines();
        }
    }

    fn rebuild_deadlines(&mut self) {
        self.deadlines = self
            .rows
            .iter()
            .map(|(slot, r)| Reverse((r.expires_boot_ns, slot)))
            .collect();
    }

    /// Whether a deadline entry still stands for the grant in its slot.
    fn live(&self, (t, slot): (u64, u32)) -> bool {
        self.rows.slot(slot).is_some_and(|r| r.expires_boot_ns == t)
    }

    /// The earliest end on CLOCK_BOOTTIME among the grants held.
    pub fn next_deadline(&mut self) -> Option<u64> {
        while let Some(&Reverse(top)) = self.deadlines.peek() {
            if self.live(top) {
                return Some(top.0);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Removes and returns every grant whose end (CLOCK_BOOTTIME) is at or before `now_ns`,
    /// earliest first.
    pub fn take_due(&mut self, now_ns: u64) -> Vec<GrantRecord> {
        let mut due = Vec::new();
        while let Some(&Reverse(top)) = self.deadlines.peek() {
            if top.0 > now_ns {
                break;
            }
            self.deadlines.pop();
            if self.live(top)
                && let Some(g) = self.remove_slot(top.1)
            {
                due.push(g);
            }
        }
        due
    }

    /// The grant other than `except`, still running at `now_ns`, that admits `addr` on
    /// (protocol, port) the longest. Probes only the prefix lengths that hold grants.
    pub fn covering(
        &self,
        except: GrantId,
        protocol: Protocol,
        port: Port,
        addr: IpAddr,
        now_ns: u64,
    ) -> Option<Grant<'_>> {
        let host = SourcePrefix::host(addr);
        let lens = self.lens.get(&(protocol, port, !host.is_ipv4()))?;
        let mut best: Option<&Row> = None;
        for len in 0..=host.prefix_len() {
            if lens[usize::from(len)] == 0 {
                continue;
            }
            let p = host.truncate(len);
            for &slot in self
                .by_scope
                .iter_hash(scope_hash(&self.scope_hasher, protocol, port, &p))
            {
                let Some(r) = self.rows.slot(slot) else {
                    continue;
                };
                if r.protocol == protocol
                    && r.port == port
                    && r.source == p
                    && r.id != except
                    && r.expires_boot_ns > now_ns
                    && best.is_none_or(|b| (r.expires_boot_ns, r.id) > (b.expires_boot_ns, b.id))
                {
                    best = Some(r);
                }
            }
        }
        best.map(|row| Grant { table: self, row })
    }

    /// A copy of every grant for writing elsewhere (journal compaction): fixed-size rows and
    /// shared texts, not one allocation per grant.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            boot_id: self.boot_id.clone(),
            rows: self.rows.iter().map(|(_, r)| *r).collect(),
            requesters: self.requesters.clone(),
            justifications: self.justifications.clone(),
        }
    }

    /// Distinct requester and justification texts held.
    pub fn interned(&self) -> (usize, usize) {
        (self.requesters.len(), self.justifications.len())
    }
}

/// One grant in the table.
#[derive(Clone, Copy)]
pub struct Grant<'a> {
    table: &'a GrantTable,
    row: &'a Row,
}

impl Grant<'_> {
    pub fn id(&self) -> GrantId {
        self.row.id
    }

    pub fn origin(&self) -> Origin {
        self.row.origin
    }

    pub fn protocol(&self) -> Protocol {
        self.row.protocol
    }

    pub fn port(&self) -> Port {
        self.row.port
    }

    pub fn source(&self) -> SourcePrefix {
        self.row.source
    }

    /// Which packets it admits.
    pub fn spec(&self) -> GrantSpec {
        GrantSpec {
            protocol: self.row.protocol,
            port: self.row.port,
            source: self.row.source,
        }
    }

    /// Its connection limit, if it has one.
    pub fn max_connections(&self) -> Option<MaxConnections> {
        self.row.max_connections
    }

    pub fn expires_boot_ns(&self) -> u64 {
        self.row.expires_boot_ns
    }

    pub fn start(&self) -> OffsetDateTime {
        utc(self.row.start_ns)
    }

    pub fn end(&self) -> OffsetDateTime {
        utc(self.row.end_ns)
    }

    pub fn requester(&self) -> &Arc<str> {
        self.table.requesters.get(self.row.requester)
    }

    pub fn justification(&self) -> &str {
        self.table.justifications.get(self.row.justification)
    }

    /// The grant as the journal and the admin socket carry it.
    pub fn record(&self) -> GrantRecord {
        record(
            self.row,
            &self.table.boot_id,
            &self.table.requesters,
            &self.table.justifications,
        )
    }
}

fn record(row: &Row, boot_id: &Arc<str>, req: &Interner, just: &Interner) -> GrantRecord {
    GrantRecord {
        id: row.id,
        protocol: row.protocol,
        port: row.port,
        source: row.source,
        start: utc(row.start_ns),
        end: utc(row.end_ns),
        requester: req.get(row.requester).clone(),
        justification: Box::from(&**just.get(row.justification)),
        origin: row.origin,
        boot_id: boot_id.clone(),
        expires_boot_ns: row.expires_boot_ns,
        max_connections: row.max_connections,
    }
}

/// The grants of a table at one moment (see [`GrantTable::snapshot`]).
pub struct Snapshot {
    boot_id: Arc<str>,
    rows: Vec<Row>,
    requesters: Interner,
    justifications: Interner,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each grant as a record, built as it is read.
    pub fn records(&self) -> impl Iterator<Item = GrantRecord> + '_ {
        self.rows
            .iter()
            .map(|r| record(r, &self.boot_id, &self.requesters, &self.justifications))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const BOOT: &str = "boot-1";

    fn grant(n: u32, source: &str, expires: u64) -> GrantRecord {
        let t0 = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        GrantRecord {
            id: id(n),
            protocol: Protocol::Tcp,
            port: Port::new(22).unwrap(),
            source: source.parse().unwrap(),
            start: t0 + time::Duration::nanoseconds(i64::from(n)),
            end: t0 + time::Duration::nanoseconds(expires as i64),
            requester: Arc::from(if n.is_multiple_of(2) { "alice" } else { "bob" }),
            justification: format!("INC-{}", n % 3).into(),
            origin: if n.is_multiple_of(5) {
                Origin::Local
            } else {
                Origin::Controller
            },
            boot_id: Arc::from(BOOT),
            expires_boot_ns: expires,
            max_connections: jitgate_common::MaxConnections::new(n % 3),
        }
    }

    fn id(n: u32) -> GrantId {
        GrantId::from_bytes(u128::from(n + 1).to_be_bytes())
    }

    fn table() -> GrantTable {
        GrantTable::new(Arc::from(BOOT))
    }

    /// The memory bound of the whole agent rests on this (docs/agent.md, BENCHMARKS.md).
    #[test]
    fn a_row_is_72_bytes() {
        assert!(
            std::mem::size_of::<Row>() <= 72,
            "{}",
            std::mem::size_of::<Row>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Row>>(),
            std::mem::size_of::<Row>()
        );
    }

    #[test]
    fn insert_get_remove_give_back_the_record() {
        let mut t = table();
        let g = grant(1, "203.0.113.0/24", 500);
        t.insert(&g).unwrap();
        assert_eq!(t.get(&g.id).map(|x| x.record()), Some(g.clone()));
        assert_eq!(t.insert(&g), Err(TableError::Duplicate(g.id)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(&g.id), Some(g.clone()));
        assert!(t.is_empty() && t.remove(&g.id).is_none());
        assert_eq!(t.interned(), (0, 0));
    }

    #[test]
    fn another_boot_id_in_a_record_becomes_the_tables() {
        let mut t = table();
        let mut g = grant(1, "203.0.113.9", 500);
        g.boot_id = Arc::from("old-boot");
        t.insert(&g).unwrap();
        assert_eq!(&*t.get(&g.id).unwrap().record().boot_id, BOOT);
    }

    #[test]
    fn unrepresentable_times_are_refused_whole() {
        let mut t = table();
        let mut g = grant(1, "203.0.113.9", 500);
        g.start = time::macros::datetime!(2300-01-01 0:00 UTC);
        assert_eq!(t.insert(&g), Err(TableError::OutOfRange(g.id)));
        assert!(t.is_empty());
        assert_eq!(t.interned(), (0, 0));
        assert!(!representable(g.start));
    }

    #[test]
    fn texts_are_shared_and_released() {
        let mut t = table();
        for n in 0..60 {
            t.insert(&grant(n, "198.51.100.1", 100 + u64::from(n)))
                .unwrap();
        }
        assert_eq!(t.interned(), (2, 3));
        let a = t.get(&id(0)).unwrap();
        let b = t.get(&id(2)).unwrap();
        assert!(Arc::ptr_eq(a.requester(), b.requester()));
        for n in 0..60 {
            t.remove(&id(n)).unwrap();
        }
        assert_eq!(t.interned(), (0, 0));
    }

    #[test]
    fn due_grants_come_out_in_order_and_removed_ones_never() {
        let mut t = table();
        for (n, exp) in [(1, 300), (2, 100), (3, 200), (4, 100), (5, 400)] {
            t.insert(&grant(n, "198.51.100.1", exp)).unwrap();
        }
        // Revoked before its end: its deadline entry is stale.
        t.remove(&id(2)).unwrap();
        assert_eq!(t.next_deadline(), Some(100));
        assert!(t.take_due(99).is_empty());
        let due: Vec<u64> = t.take_due(200).iter().map(|g| g.expires_boot_ns).collect();
        assert_eq!(due, vec![100, 200]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next_deadline(), Some(300));
        // A grant removed and another in its slot with an earlier end.
        t.remove(&id(1)).unwrap();
        t.insert(&grant(9, "198.51.100.1", 250)).unwrap();
        let due: Vec<u32> = t
            .take_due(1000)
            .iter()
            .map(|g| g.expires_boot_ns as u32)
            .collect();
        assert_eq!(due, vec![250, 400]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn covering_finds_the_longest_other_running_grant() {
        let mut t = table();
        let wide = grant(1, "203.0.113.0/24", 1000);
        let host = grant(2, "203.0.113.9", 500);
        let later_host = grant(3, "203.0.113.9", 700);
        let v6 = grant(4, "2001:db8::/32", 900);
        for g in [&wide, &host, &later_host, &v6] {
            t.insert(g).unwrap();
        }
        let tcp22 = (Protocol::Tcp, Port::new(22).unwrap());
        let at = |addr: &str, except: &GrantRecord, now| {
            t.covering(except.id, tcp22.0, tcp22.1, addr.parse().unwrap(), now)
                .map(|g| g.id())
        };
        assert_eq!(at("203.0.113.9", &host, 0), Some(wide.id));
        assert_eq!(at("203.0.113.9", &wide, 0), Some(later_host.id));
        assert_eq!(at("203.0.113.9", &wide, 700), None);
        assert_eq!(at("::ffff:203.0.113.200", &host, 999), Some(wide.id));
        assert_eq!(at("203.0.113.9", &host, 1000), None);
        assert_eq!(at("198.51.100.1", &host, 0), None);
        assert_eq!(at("2001:db8:1::5", &wide, 0), Some(v6.id));
        assert_eq!(at("2001:db8:1::5", &v6, 0), None);
        assert!(
            t.covering(
                host.id,
                Protocol::Udp,
                tcp22.1,
                "203.0.113.9".parse().unwrap(),
                0
            )
            .is_none()
        );
    }

    #[test]
    fn snapshot_holds_every_record() {
        let mut t = table();
        for n in 0..10 {
            t.insert(&grant(n, "203.0.113.0/24", 100)).unwrap();
        }
        let snap = t.snapshot();
        t.remove(&id(0)).unwrap();
        let mut a: Vec<GrantRecord> = snap.records().collect();
        let mut b: Vec<GrantRecord> = (0..10).map(|n| grant(n, "203.0.113.0/24", 100)).collect();
        a.sort_by_key(|g| g.id);
        b.sort_by_key(|g| g.id);
        assert_eq!(a, b);
    }

    /// Random inserts, removals, expiries and covering queries against a plain map; also
    /// crosses the compaction threshold several times.
    #[test]
    fn matches_a_plain_map() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut t = table();
        let mut model: BTreeMap<GrantId, GrantRecord> = BTreeMap::new();
        let mut now = 0u64;
        let mut n = 0u32;
        for step in 0..20_000 {
            match next() % 10 {
                0..=4 => {
                    n += 1;
                    let len = [8u8, 24, 30, 32][(next() % 4) as usize];
                    let addr = u32::from_be_bytes([198, 51, 100, (next() % 16) as u8]);
                    let p = SourcePrefix::host(IpAddr::V4(addr.into())).truncate(len);
                    let g = grant(n, &p.to_string(), now + 1 + next() % 5000);
                    t.insert(&g).unwrap();
                    model.insert(g.id, g);
                }
                5 | 6 => {
                    if let Some(id) = model.keys().nth((next() as usize) % model.len().max(1)) {
                        let id = *id;
                        assert_eq!(t.remove(&id), model.remove(&id));
                    }
                }
                7 => {
                    now += next() % 300;
                    let mut due = t.take_due(now);
                    let mut want: Vec<GrantRecord> = model
                        .values()
                        .filter(|g| g.expires_boot_ns <= now)
                        .cloned()
                        .collect();
                    model.retain(|_, g| g.expires_boot_ns > now);
                    assert!(
                        due.windows(2)
                            .all(|w| w[0].expires_boot_ns <= w[1].expires_boot_ns)
                    );
                    due.sort_by_key(|g| g.id);
                    want.sort_by_key(|g| g.id);
                    assert_eq!(due, want, "step {step}");
                }
                _ => {
                    let addr = IpAddr::V4([198, 51, 100, (next() % 16) as u8].into());
                    let except = model.keys().next().copied().unwrap_or(GrantId::random());
                    let got = t
                        .covering(except, Protocol::Tcp, Port::new(22).unwrap(), addr, now)
                        .map(|g| (g.expires_boot_ns(), g.id()));
                    let want = model
                        .values()
                        .filter(|g| {
                            g.id != except
                                && g.expires_boot_ns > now
                                && g.source.contains_addr(addr)
                        })
                        .map(|g| (g.expires_boot_ns, g.id))
                        .max();
                    assert_eq!(got, want, "step {step}");
                }
            }
            assert_eq!(t.len(), model.len());
        }
        for id in model.keys() {
            assert_eq!(t.get(id).map(|g| g.record()).as_ref(), model.get(id));
        }
    }

    /// Most grants removed: the rows are compacted (every slot renumbered) and every index
    /// and deadline follows them.
    #[test]
    fn compaction_keeps_every_answer() {
        let mut t = table();
        for n in 0..5000 {
            let src = format!("198.51.{}.{}", n / 256, n % 256);
            t.insert(&grant(n, &src, 10_000 + u64::from(n))).unwrap();
        }
        for n in (0..5000).filter(|n| n % 10 != 7) {
            t.remove(&id(n)).unwrap();
        }
        assert_eq!(t.len(), 500);
        assert!(!t.rows.is_sparse());
        assert!(
            t.deadlines.len() <= 2 * t.len() + 1024,
            "{}",
            t.deadlines.len()
        );
        let tcp22 = (Protocol::Tcp, Port::new(22).unwrap());
        for n in (0..5000).filter(|n| n % 10 == 7) {
            assert_eq!(t.get(&id(n)).map(|g| g.id()), Some(id(n)));
            let addr = format!("198.51.{}.{}", n / 256, n % 256).parse().unwrap();
            let found = t.covering(GrantId::random(), tcp22.0, tcp22.1, addr, 0);
            assert_eq!(found.map(|g| g.id()), Some(id(n)));
        }
        assert_eq!(t.next_deadline(), Some(10_007));
        let due = t.take_due(10_000 + 2_000);
        assert_eq!(due.len(), 200);
        assert_eq!(t.len(), 300);
    }
}
