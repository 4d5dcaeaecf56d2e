//! The jitgate XDP program.
//!
//! Default-deny for protected (protocol, port) pairs: a packet to one passes only if an active
//! grant covers its source address, or it belongs to a flow admitted under one. Everything
//! else passes untouched, at the cost of one array lookup. See docs/dataplane.md.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the one atomic fetch-and-add (see `fetch_add_u64`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use jitgate_common::{
    ClockCache, ConnLimit, Counter, DataplaneConfig, Event, EventKind, FlowEntry, FlowKey,
    GrantEntry, GrantKeyV4, GrantKeyV6, KEY_PREFIX_BITS, LimitedSyn, PROTECTED_SLOTS,
    PrefilterBlock, PrefilterCtl, RateWindow, SourceBucket, event::FAMILY_V4, limits, port_flags,
    prefilter,
};
use parse::{Ip16, Link, Parsed, Pkt, Verdict};

const BPF_F_NO_PREALLOC: u32 = 1;
/// User space writes the prefilter through a shared mapping: one atomic store per word.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_NOEXIST: u64 = 1;

#[map(name = "JG_PROTECTED")]
static PROTECTED: Array<u8> = Array::pinned(PROTECTED_SLOTS, 0);

#[map(name = "JG_GRANTS_V4")]
static GRANTS_V4: HashMap<GrantKeyV4, GrantEntry> =
    HashMap::pinned(limits::HOST_GRANTS, BPF_F_NO_PREALLOC);

#[map(name = "JG_GRANTS_V6")]
static GRANTS_V6: HashMap<GrantKeyV6, GrantEntry> =
    HashMap::pinned(limits::HOST_GRANTS, BPF_F_NO_PREALLOC);

#[map(name = "JG_GRANT_LPM4")]
static GRANTS_LPM_V4: LpmTrie<GrantKeyV4, GrantEntry> = LpmTrie::pinned(limits::PREFIX_GRANTS, 0);

#[map(name = "JG_GRANT_LPM6")]
static GRANTS_LPM_V6: LpmTrie<GrantKeyV6, GrantEntry> = LpmTrie::pinned(limits::PREFIX_GRANTS, 0);

#[map(name = "JG_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(limits::FLOWS, 0);

#[map(name = "JG_CONFIG")]
static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

#[map(name = "JG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

#[map(name = "JG_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(limits::EVENTS_BYTES, 0);

#[map(name = "JG_RATE")]
static RATE: PerCpuArray<RateWindow> = PerCpuArray::pinned(1, 0);

#[map(name = "JG_CLOCK")]
static CLOCK: PerCpuArray<ClockCache> = PerCpuArray::pinned(1, 0);

#[map(name = "JG_PREFILTER")]
static PREFILTER: Array<PrefilterBlock> = Array::pinned(limits::PREFILTER_BLOCKS, BPF_F_MMAPABLE);

#[map(name = "JG_PREFILT_CTL")]
static PREFILTER_CTL: Array<PrefilterCtl> = Array::pinned(1, BPF_F_MMAPABLE);

#[map(name = "JG_CONN_LIMIT")]
static CONN_LIMITS: HashMap<[u8; 16], ConnLimit> =
    HashMap::pinned(limits::CONN_LIMITS, BPF_F_NO_PREALLOC);

#[map(name = "JG_LIM_SYNS")]
static LIMITED_SYNS: LruHashMap<FlowKey, LimitedSyn> = LruHashMap::pinned(limits::LIMITED_SYNS, 0);

#[map(name = "JG_SRC_RATE")]
static SRC_RATE: LruHashMap<SourceBucket, u64> = LruHashMap::pinned(limits::SRC_RATE, 0);

/// The enforcing program for devices whose frames start with an Ethernet header.
#[xdp]
pub fn jitgate(ctx: XdpContext) -> u32 {
    verdict(&ctx, Link::Ethernet)
}

/// The same enforcement for devices without a link-layer header (tunnels): packets start at
/// the IP header. See docs/dataplane.md, "Tunnel devices".
#[xdp]
pub fn jitgate_l3(ctx: XdpContext) -> u32 {
    verdict(&ctx, Link::Ip)
}

/// tcx: pass to the next program of the chain (TC_ACT_UNSPEC), or drop.
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// Bytes made linear before parsing at tc: every header the parser walks in practice. Longer
/// header chains read past it and are dropped as malformed (fail closed).
const TC_PULL: u32 = 512;

/// The same enforcement at tcx ingress, where an interface's XDP hook holds a program that
/// is not dispatcher-aware. A VLAN tag the stack took into the skb's metadata counts as one
/// of the two tags walked. Passing hands the packet on to the next tcx program.
#[classifier]
pub fn jitgate_tc(ctx: TcContext) -> i32 {
    tc(&ctx, Link::Ethernet)
}

/// tcx ingress on devices without a link-layer header (tunnels).
#[classifier]
pub fn jitgate_tc_l3(ctx: TcContext) -> i32 {
    tc(&ctx, Link::Ip)
}

#[inline(always)]
fn tc(ctx: &TcContext, link: Link) -> i32 {
    let want = core::cmp::min(ctx.len(), TC_PULL);
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Failure leaves the linear part as it is: the parser then drops what it cannot see.
        let _ = ctx.pull_data(want);
    }
    if verdict(ctx, link) == xdp_action::XDP_PASS {
        TCX_NEXT
    } else {
        TC_ACT_SHOT
    }
}

/// Everything after the link layer is shared; `link` is a constant in each entry point, so
/// each one compiles to its own straight-line path.
#[inline(always)]
fn verdict<C: Pkt>(ctx: &C, link: Link) -> u32 {
    match parse::parse(ctx, link) {
        Verdict::Decided(action, counter) => {
            count(counter);
            action
        }
        Verdict::Inspect(p) => enforce(ctx, &p),
    }
}

/// The floor for benchmarks: the cheapest possible XDP program.
#[xdp]
pub fn jitgate_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The receive-side floor for flood benchmarks: drop everything, look at nothing.
#[xdp]
pub fn jitgate_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // Per-CPU slot: no other writer, no atomic needed.
        unsafe { *v += 1 };
    }
}

/// A TCP/UDP packet whose ports are known: decide.
#[inline(always)]
fn enforce<C: Pkt>(ctx: &C, p: &Parsed) -> u32 {
    let idx = ((p.proto == parse::IPPROTO_UDP) as u32) << 16 | p.dport as u32;
    let flags = match PROTECTED.get(idx) {
        Some(f) => *f,
        None => 0,
    };
    if flags & port_flags::PROTECTED == 0 {
        count(Counter::PassedUnprotected);
        return xdp_action::XDP_PASS;
    }
    let Some((saddr, daddr)) = parse::addresses(ctx, p) else {
        count(Counter::DroppedMalformed);
        return xdp_action::XDP_DROP;
    };
    let fkey = || FlowKey {
        family: p.family,
        proto: p.proto,
        sport: p.sport.to_be_bytes(),
        dport: p.dport.to_be_bytes(),
        _pad: [0; 2],
        saddr: saddr.bytes(),
        daddr: daddr.bytes(),
    };

    // A packet of an admitted flow. A SYN always needs an active grant, so it skips this.
    if !p.tcp_syn
        && let Some(f) = FLOWS.get_ptr_mut(&fkey())
    {
        // SAFETY: a map value pointer, valid for this program run.
        let f = unsafe { &mut *f };
        let mut now = Now::read();
        if now.before(f.grant_expires_ns) {
            touch(f, now.approx());
            count(Counter::AllowedByFlow);
            return xdp_action::XDP_PASS;
        }
        // Past the end seen at admission: an extension or another grant may cover it now.
        if let Some(g) = lookup_grant(p, flags, &saddr)
            && now.before(g.expires_at_ns)
        {
            f.grant_expires_ns = g.expires_at_ns;
            f.grant_id = g.grant_id;
            f.last_seen_ns = now.approx();
            count(Counter::AllowedByGrant);
            return xdp_action::XDP_PASS;
        }
        // No active grant. A `keep` port lets the flow continue until it sits idle.
        if flags & port_flags::CUT == 0
            && let Some(cfg) = CONFIG.get(0)
            && now.before(f.last_seen_ns.saturating_add(cfg.flow_idle_timeout_ns))
        {
            touch(f, now.approx());
            count(Counter::AllowedKeptFlow);
            return xdp_action::XDP_PASS;
        }
        return deny(ctx, p, &saddr, &daddr, Counter::DeniedExpired);
    }

    // A new flow: an active grant must cover the source.
    let Some(g) = lookup_grant(p, flags, &saddr) else {
        return deny(ctx, p, &saddr, &daddr, Counter::DeniedNoGrant);
    };
    let mut now = Now::read();
    if !now.before(g.expires_at_ns) {
        return deny(ctx, p, &saddr, &daddr, Counter::DeniedExpired);
    }
    // A limited grant admits a new flow only if it gets one of the grant's slots.
    let slot = if flags & port_flags::LIMITED != 0 {
        take_slot(p, &fkey(), &g.grant_id)
    } else {
        Slot::Unlimited
    };
    if slot == Slot::Refused {
        return deny(ctx, p, &saddr, &daddr, Counter::DeniedConnLimit);
    }
    let now = now.precise();
    let entry = FlowEntry {
        admitted_at_ns: now,
        last_seen_ns: now,
        grant_expires_ns: g.expires_at_ns,
        grant_id: g.grant_id,
    };
    // NOEXIST: a retransmitted SYN or a racing CPU finds the flow already there and emits
    // no second event.
    if FLOWS.insert(&fkey(), &entry, BPF_NOEXIST).is_ok() {
        emit(
            ctx,
            p,
            &saddr,
            &daddr,
            EventKind::Admitted,
            Counter::AllowedByGrant,
            &g.grant_id,
            now,
        );
    }
    // Once per grant, even if a racing CPU recorded this 5-tuple first.
    if slot == Slot::Last {
        emit(
            ctx,
            p,
            &saddr,
            &daddr,
            EventKind::LimitReached,
            Counter::AllowedByGrant,
            &g.grant_id,
            now,
        );
    }
    count(Counter::AllowedByGrant);
    xdp_action::XDP_PASS
}

/// Whether a new flow under grant `grant` may be admitted: the grant has no connection limit,
/// or the flow takes one of its remaining slots, or it is a retransmitted SYN of a connection
/// that took one. Slots are taken with one atomic fetch-and-add on the grant's counter: each
/// CPU gets a distinct previous value, so exactly `limit` flows ever get one below the limit.
#[inline(always)]
fn take_slot(p: &Parsed, key: &FlowKey, grant: &[u8; 16]) -> Slot {
    let Some(l) = CONN_LIMITS.get_ptr_mut(grant) else {
        // This grant is not limited (another grant on the pair is).
        return Slot::Unlimited;
    };
    if p.tcp_syn {
        // SAFETY: the value is read at once.
        if let Some(s) = unsafe { LIMITED_SYNS.get(key) }
            && s.grant_id == *grant
            && s.seq == p.tcp_seq
        {
            return Slot::Retransmission;
        }
    }
    // SAFETY: a map value pointer, valid for this program run; `taken` is 8-byte aligned.
    let (limit, before) = unsafe { ((*l).limit, fetch_add_u64(&raw mut (*l).taken, 1)) };
    if before >= limit {
        return Slot::Refused;
    }
    if p.tcp_syn {
        let s = LimitedSyn {
            grant_id: *grant,
            seq: p.tcp_seq,
            _pad: 0,
        };
        // Best effort: if it cannot be recorded, a retransmission takes another slot.
        let _ = LIMITED_SYNS.insert(key, &s, 0);
    }
    if before + 1 == limit {
        Slot::Last
    } else {
        Slot::Taken
    }
}

/// What `take_slot` decided for a new flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The grant has no limit.
    Unlimited,
    /// A retransmitted SYN of a connection that already has a slot.
    Retransmission,
    /// A slot, with more left.
    Taken,
    /// The grant's last slot.
    Last,
    /// No slot left: refused.
    Refused,
}

/// `*p += v` atomically across CPUs, returning the previous value (BPF_ATOMIC | BPF_FETCH |
/// BPF_ADD, kernel 5.12 and later).
/// Written as the instruction itself: the BPF target has no `AtomicU64::fetch_add` (rustc's
/// target has no compare-and-swap), and for the `generic` CPU bpf-linker compiles for, LLVM
/// refuses to use the value an atomic add returns (that needs BPF_FETCH, CPU v3).
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn fetch_add_u64(p: *mut u64, v: u64) -> u64 {
    let mut r = v;
    // SAFETY: the caller passes a valid, aligned pointer into a map value; the instruction
    // reads and writes only that word and puts its previous value in `r`.
    unsafe {
        core::arch::asm!(
            "{r} = atomic_fetch_add((u64 *)({p} + 0), {r})",
            p = in(reg) p,
            r = inout(reg) r,
            options(nostack),
        );
    }
    r
}

/// Host builds (clippy) only: the program never runs there.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn fetch_add_u64(p: *mut u64, v: u64) -> u64 {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
        .fetch_add(v, core::sync::atomic::Ordering::SeqCst)
}

/// The current CLOCK_BOOTTIME, known to lie in `[lo, hi]` from the per-CPU cache (see
/// `ClockCache`), read precisely only when a deadline falls inside that interval.
struct Now {
    lo: u64,
    hi: u64,
    exact: bool,
}

impl Now {
    #[inline(always)]
    fn read() -> Now {
        let slack = match CONFIG.get(0) {
            Some(c) => c.clock_slack_ns,
            None => 0,
        };
        // SAFETY: a helper with no arguments.
        let j = unsafe { bpf_jiffies64() };
        if slack != 0
            && let Some(c) = CLOCK.get_ptr_mut(0)
        {
            // SAFETY: this CPU's slot of a per-CPU array.
            let c = unsafe { &mut *c };
            if c.jiffies == j && c.boot_ns != 0 {
                return Now {
                    lo: c.boot_ns,
                    hi: c.boot_ns.saturating_add(slack),
                    exact: false,
                };
            }
            let b = boot_ns();
            c.jiffies = j;
            c.boot_ns = b;
            return Now {
                lo: b,
                hi: b,
                exact: true,
            };
        }
        let b = boot_ns();
        Now {
            lo: b,
            hi: b,
            exact: true,
        }
    }

    /// Whether now is strictly before `deadline`, exactly.
    #[inline(always)]
    fn before(&mut self, deadline: u64) -> bool {
        if deadline > self.hi {
            return true;
        }
        if deadline <= self.lo {
            return false;
        }
        self.precise() < deadline
    }

    /// The precise time (reads the clock unless already exact).
    #[inline(always)]
    fn precise(&mut self) -> u64 {
        if !self.exact {
            let b = boot_ns();
            self.lo = b;
            self.hi = b;
            self.exact = true;
        }
        self.lo
    }

    /// A time no later than now and at most two ticks old: for idle bookkeeping.
    #[inline(always)]
    fn approx(&self) -> u64 {
        self.lo
    }
}

#[inline(always)]
fn boot_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn deny<C: Pkt>(ctx: &C, p: &Parsed, saddr: &Ip16, daddr: &Ip16, reason: Counter) -> u32 {
    count(reason);
    if deny_event_allowed(p, saddr) {
        emit(
            ctx,
            p,
            saddr,
            daddr,
            EventKind::Denied,
            reason,
            &[0; 16],
            boot_ns(),
        );
    } else {
        count(Counter::EventsSuppressed);
    }
    xdp_action::XDP_DROP
}

/// Refresh a flow's idle clock, writing at most once per `flow_touch_ns` (an eighth of the
/// idle timeout, at most a second) so that the hot path rarely dirties the entry.
#[inline(always)]
fn touch(f: &mut FlowEntry, now: u64) {
    let gran = match CONFIG.get(0) {
        Some(c) => c.flow_touch_ns,
        None => 0,
    };
    if now.wrapping_sub(f.last_seen_ns) > gran {
        f.last_seen_ns = now;
    }
}

/// The grant entry covering the source: exact host entry first, then the longest prefix.
/// Each map is consulted only if the slot's flags say some grant on this pair lives there,
/// and the prefilter does not rule the key out. Each entry already holds the latest end of
/// every grant covering it (see `GrantEntry`).
#[inline(always)]
fn lookup_grant(p: &Parsed, flags: u8, saddr: &Ip16) -> Option<GrantEntry> {
    let port = p.dport.to_be_bytes();
    let ctl = PREFILTER_CTL.get(0);
    if p.family == FAMILY_V4 {
        let key = GrantKeyV4 {
            proto: p.proto,
            port,
            addr: (saddr.0[0] as u32).to_le_bytes(),
        };
        // Numeric (host order) address for the prefilter hash.
        let addr = (saddr.0[0] as u32).swap_bytes();
        if flags & port_flags::HOST_V4 != 0 && maybe_host_v4(ctl, p, addr) {
            // SAFETY: the value is copied out at once.
            if let Some(e) = unsafe { GRANTS_V4.get(&key) } {
                return Some(*e);
            }
        }
        if flags & port_flags::PREFIX_V4 == 0 || !maybe_prefix_v4(ctl, p, addr) {
            return None;
        }
        GRANTS_LPM_V4
            .get(Key::new(KEY_PREFIX_BITS + 32, key))
            .copied()
    } else {
        let key = GrantKeyV6 {
            proto: p.proto,
            port,
            addr: saddr.bytes(),
        };
        let hi = saddr.0[0].swap_bytes();
        let lo = saddr.0[1].swap_bytes();
        if flags & port_flags::HOST_V6 != 0 && maybe_host_v6(ctl, p, hi, lo) {
            // SAFETY: the value is copied out at once.
            if let Some(e) = unsafe { GRANTS_V6.get(&key) } {
                return Some(*e);
            }
        }
        if flags & port_flags::PREFIX_V6 == 0 || !maybe_prefix_v6(ctl, p, hi, lo) {
            return None;
        }
        GRANTS_LPM_V6
            .get(Key::new(KEY_PREFIX_BITS + 128, key))
            .copied()
    }
}

/// A region's geometry word, read once (user space replaces it with one 8-byte store).
#[inline(always)]
fn geometry(ctl: Option<&PrefilterCtl>, region: usize) -> u64 {
    match ctl {
        // SAFETY: a map value field, aligned; read once.
        Some(c) => unsafe { core::ptr::read_volatile(&c.geometry[region]) },
        None => 0,
    }
}

/// Whether the key with hash `h` may be in the region described by `g`. A region that is
/// not filtering (0) says "maybe", as does a missing block (cannot happen: user space sizes
/// regions inside the array).
#[inline(always)]
fn maybe(g: u64, h: u64) -> bool {
    if g & prefilter::VALID == 0 {
        return true;
    }
    let idx = prefilter::base(g).wrapping_add(prefilter::block_of(h, prefilter::mask(g)));
    let Some(b) = PREFILTER.get_ptr(idx) else {
        return true;
    };
    let mut hit = true;
    let mut i = 0;
    while i < prefilter::BITS_PER_KEY {
        let bit = prefilter::bit_of(h, i);
        // SAFETY: `bit >> 6` < 8 = words per block; a map value pointer, valid for this run.
        let w = unsafe { core::ptr::read_volatile((b as *const u64).add((bit >> 6) as usize)) };
        hit &= w & (1u64 << (bit & 63)) != 0;
        i += 1;
    }
    hit
}

#[inline(always)]
fn seed(ctl: Option<&PrefilterCtl>) -> u64 {
    match ctl {
        Some(c) => c.seed,
        None => 0,
    }
}

#[inline(always)]
fn maybe_host_v4(ctl: Option<&PrefilterCtl>, p: &Parsed, addr: u32) -> bool {
    let g = geometry(ctl, prefilter::HOST_V4);
    g & prefilter::VALID == 0 || maybe(g, prefilter::hash_v4(seed(ctl), p.proto, p.dport, 32, addr))
}

#[inline(always)]
fn maybe_host_v6(ctl: Option<&PrefilterCtl>, p: &Parsed, hi: u64, lo: u64) -> bool {
    let g = geometry(ctl, prefilter::HOST_V6);
    g & prefilter::VALID == 0
        || maybe(
            g,
            prefilter::hash_v6(seed(ctl), p.proto, p.dport, 128, hi, lo),
        )
}

/// Whether any shorter prefix length in use may hold a key covering `addr`. The lengths
/// word lists up to `MAX_PROBED_LENS` of them; with more in use it says "maybe".
#[inline(always)]
fn maybe_prefix_v4(ctl: Option<&PrefilterCtl>, p: &Parsed, addr: u32) -> bool {
    probe_lens(
        ctl,
        prefilter::PREFIX_V4,
        |c| &c.lens_v4,
        |seed, len| prefilter::hash_v4(seed, p.proto, p.dport, len, prefilter::mask_v4(addr, len)),
    )
}

/// The same for IPv6.
#[inline(always)]
fn maybe_prefix_v6(ctl: Option<&PrefilterCtl>, p: &Parsed, hi: u64, lo: u64) -> bool {
    probe_lens(
        ctl,
        prefilter::PREFIX_V6,
        |c| &c.lens_v6,
        |seed, len| {
            let (mh, ml) = prefilter::mask_v6(hi, lo, len);
            prefilter::hash_v6(seed, p.proto, p.dport, len, mh, ml)
        },
    )
}

/// Probes `region` for each prefix length its lengths word lists, hashing with `hash`.
#[inline(always)]
fn probe_lens(
    ctl: Option<&PrefilterCtl>,
    region: usize,
    word: impl Fn(&PrefilterCtl) -> &u64,
    hash: impl Fn(u64, u8) -> u64,
) -> bool {
    let g = geometry(ctl, region);
    let Some(c) = ctl else {
        return true;
    };
    if g & prefilter::VALID == 0 {
        return true;
    }
    // SAFETY: a map value field, aligned; read once.
    let lens = unsafe { core::ptr::read_volatile(word(c)) };
    if lens == prefilter::LENS_OVERFLOW {
        return true;
    }
    let seed = c.seed;
    let mut i = 0;
    while i < prefilter::MAX_PROBED_LENS {
        let b = (lens >> (8 * i)) & 0xff;
        if b == 0 {
            return false;
        }
        if maybe(g, hash(seed, (b - 1) as u8)) {
            return true;
        }
        i += 1;
    }
    false
}

/// Denial events are limited twice: a per-CPU budget per second (so a flood from many
/// spoofed sources cannot fill the ring buffer), then one event per source bucket per
/// interval (IPv4 /32, IPv6 /64). Past the budget a denial costs no map lookup at all; a
/// single-source flood is caught by the per-CPU last-source cache before the hash map.
#[inline(always)]
fn deny_event_allowed(p: &Parsed, saddr: &Ip16) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let Some(w) = RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let w = unsafe { &mut *w };
    // SAFETY: a helper with no arguments.
    let now = unsafe { bpf_jiffies64() };
    if now.wrapping_sub(w.window_start) >= cfg.jiffies_per_sec {
        w.window_start = now;
        w.count = 0;
    }
    if w.count >= cfg.deny_events_per_sec as u64 {
        return false;
    }
    let bucket = SourceBucket {
        addr: saddr.prefix64().bytes(),
        family: p.family as u64,
    };
    if w.last == bucket && now.wrapping_sub(w.last_at) < cfg.deny_event_interval_jiffies {
        return false;
    }
    match SRC_RATE.get_ptr_mut(&bucket) {
        Some(last) => {
            // SAFETY: a map value pointer, valid for this program run.
            let last = unsafe { &mut *last };
            if now.wrapping_sub(*last) < cfg.deny_event_interval_jiffies {
                return false;
            }
            *last = now;
        }
        None => {
            let _ = SRC_RATE.insert(&bucket, &now, 0);
        }
    }
    w.last = bucket;
    w.last_at = now;
    w.count += 1;
    true
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit<C: Pkt>(
    ctx: &C,
    p: &Parsed,
    saddr: &Ip16,
    daddr: &Ip16,
    kind: EventKind,
    reason: Counter,
    grant_id: &[u8; 16],
    now: u64,
) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            e.write(Event {
                ts_ns: now,
                grant_id: *grant_id,
                saddr: saddr.bytes(),
                daddr: daddr.bytes(),
                sport: p.sport,
                dport: p.dport,
                kind: kind as u8,
                family: p.family,
                proto: p.proto,
                reason: reason as u8,
                ifindex: ctx.ifindex(),
                _pad: 0,
            });
            e.submit(0);
            count(Counter::EventsSent);
        }
        None => count(Counter::EventsLost),
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Only the BPF target is the real program (the agent's build.rs builds it with aya-build).
// For the host (`cargo build --workspace`, clippy) the crate is an ordinary std binary with
// an empty `main`: no second panic handler beside std's, which other crates link anyway.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
