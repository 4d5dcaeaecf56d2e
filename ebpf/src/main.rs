//! The jitgate XDP program.
//!
//! Default-deny for protected (protocol, port) pairs: a packet to one passes only if an active
//! grant covers its source address, or it belongs to a flow admitted under one. Everything
//! else passes untouched, at the cost of one array lookup. See docs/dataplane.md.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_boot_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use jitgate_common::{
    Counter, DataplaneConfig, Event, EventKind, FlowEntry, FlowKey, GrantEntry, GrantKeyV4,
    GrantKeyV6, KEY_PREFIX_BITS, PROTECTED_SLOTS, RateWindow, SourceBucket,
    event::{FAMILY_V4, FAMILY_V6},
    limits, port_flags,
};
use parse::{Parsed, Verdict};

const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;
const NS_PER_SEC: u64 = 1_000_000_000;

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

#[map(name = "JG_SRC_RATE")]
static SRC_RATE: LruHashMap<SourceBucket, u64> = LruHashMap::pinned(limits::SRC_RATE, 0);

#[xdp]
pub fn jitgate(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Verdict::Decided(action, counter) => {
            count(counter);
            action
        }
        Verdict::Inspect(p) => enforce(&ctx, &p),
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
fn enforce(ctx: &XdpContext, p: &Parsed) -> u32 {
    let idx = ((p.proto == parse::IPPROTO_UDP) as u32) << 16 | p.dport as u32;
    let flags = match PROTECTED.get(idx) {
        Some(f) => *f,
        None => 0,
    };
    if flags & port_flags::PROTECTED == 0 {
        count(Counter::PassedUnprotected);
        return xdp_action::XDP_PASS;
    }
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let cfg = CONFIG.get(0);

    let fkey = FlowKey {
        family: p.family,
        proto: p.proto,
        sport: p.sport.to_be_bytes(),
        dport: p.dport.to_be_bytes(),
        _pad: [0; 2],
        saddr: p.saddr,
        daddr: p.daddr,
    };
    let flow = FLOWS.get_ptr_mut(&fkey);
    if let Some(f) = flow {
        let f = unsafe { &mut *f };
        if now < f.grant_expires_ns {
            touch(f, now);
            count(Counter::AllowedByFlow);
            return xdp_action::XDP_PASS;
        }
    }

    match lookup_grant(p) {
        Some(g) if now < g.expires_at_ns => {
            match flow {
                Some(f) => {
                    // The flow's grant ended but another (or an extension) covers it now.
                    let f = unsafe { &mut *f };
                    f.grant_expires_ns = g.expires_at_ns;
                    f.grant_id = g.grant_id;
                    f.last_seen_ns = now;
                }
                None => {
                    let entry = FlowEntry {
                        admitted_at_ns: now,
                        last_seen_ns: now,
                        grant_expires_ns: g.expires_at_ns,
                        grant_id: g.grant_id,
                    };
                    if FLOWS.insert(&fkey, &entry, BPF_NOEXIST).is_ok() {
                        emit(
                            ctx,
                            p,
                            EventKind::Admitted,
                            Counter::AllowedByGrant,
                            &g.grant_id,
                            now,
                        );
                    } else {
                        count(Counter::FlowInsertFailed);
                    }
                }
            }
            count(Counter::AllowedByGrant);
            xdp_action::XDP_PASS
        }
        found => {
            // No active grant. A `keep` port lets an admitted, non-idle flow continue; a new
            // connection (SYN) always needs an active grant.
            if flags & port_flags::CUT == 0 && !p.tcp_syn {
                if let (Some(f), Some(cfg)) = (flow, cfg) {
                    let f = unsafe { &mut *f };
                    if now < f.last_seen_ns.saturating_add(cfg.flow_idle_timeout_ns) {
                        touch(f, now);
                        count(Counter::AllowedKeptFlow);
                        return xdp_action::XDP_PASS;
                    }
                }
            }
            let reason = if found.is_some() || flow.is_some() {
                Counter::DeniedExpired
            } else {
                Counter::DeniedNoGrant
            };
            count(reason);
            if deny_event_allowed(p, now, cfg) {
                emit(ctx, p, EventKind::Denied, reason, &[0; 16], now);
            } else {
                count(Counter::EventsSuppressed);
            }
            xdp_action::XDP_DROP
        }
    }
}

/// Refresh a flow's idle clock, writing at most once a second.
#[inline(always)]
fn touch(f: &mut FlowEntry, now: u64) {
    if now.wrapping_sub(f.last_seen_ns) > NS_PER_SEC {
        f.last_seen_ns = now;
    }
}

/// The grant entry covering the source: exact host entry first, then the longest prefix.
/// Each entry already holds the latest end of every grant covering it (see `GrantEntry`).
#[inline(always)]
fn lookup_grant(p: &Parsed) -> Option<GrantEntry> {
    let port = p.dport.to_be_bytes();
    if p.family == FAMILY_V4 {
        let key = GrantKeyV4 {
            proto: p.proto,
            port,
            addr: [p.saddr[0], p.saddr[1], p.saddr[2], p.saddr[3]],
        };
        if let Some(e) = unsafe { GRANTS_V4.get(&key) } {
            return Some(*e);
        }
        GRANTS_LPM_V4
            .get(Key::new(KEY_PREFIX_BITS + 32, key))
            .copied()
    } else {
        let key = GrantKeyV6 {
            proto: p.proto,
            port,
            addr: p.saddr,
        };
        if let Some(e) = unsafe { GRANTS_V6.get(&key) } {
            return Some(*e);
        }
        GRANTS_LPM_V6
            .get(Key::new(KEY_PREFIX_BITS + 128, key))
            .copied()
    }
}

/// Denial events are limited twice: a per-CPU budget per second (so a flood from many
/// spoofed sources cannot fill the ring buffer), then one event per source bucket per
/// interval (IPv4 /32, IPv6 /64). The per-source map is only touched within the budget, so
/// a flood costs at most `budget` map writes per second per CPU.
#[inline(always)]
fn deny_event_allowed(p: &Parsed, now: u64, cfg: Option<&DataplaneConfig>) -> bool {
    let Some(cfg) = cfg else { return false };
    let Some(w) = RATE.get_ptr_mut(0) else {
        return false;
    };
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.window_start_ns) >= NS_PER_SEC {
        w.window_start_ns = now;
        w.count = 0;
    }
    if w.count >= cfg.deny_events_per_sec as u64 {
        return false;
    }
    let mut bucket = SourceBucket {
        family: p.family,
        addr: p.saddr,
    };
    if p.family == FAMILY_V6 {
        bucket.addr[8..].copy_from_slice(&[0; 8]);
    }
    match SRC_RATE.get_ptr_mut(&bucket) {
        Some(last) => {
            let last = unsafe { &mut *last };
            if now.wrapping_sub(*last) < cfg.deny_event_interval_ns {
                return false;
            }
            *last = now;
        }
        None => {
            let _ = SRC_RATE.insert(&bucket, &now, 0);
        }
    }
    w.count += 1;
    true
}

#[inline(always)]
fn emit(
    ctx: &XdpContext,
    p: &Parsed,
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
                saddr: p.saddr,
                daddr: p.daddr,
                sport: p.sport,
                dport: p.dport,
                kind: kind as u8,
                family: p.family,
                proto: p.proto,
                reason: reason as u8,
                ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
                _pad: 0,
            });
            e.submit(0);
            count(Counter::EventsSent);
        }
        None => count(Counter::EventsLost),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
