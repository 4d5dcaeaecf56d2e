//! The layout of every map the XDP program reads or writes. Bump [`LAYOUT_VERSION`] whenever
//! a name, key, value or meaning below changes: the agent refuses to adopt pinned maps of
//! another layout rather than misread them.

use crate::net::{Port, Protocol, SourcePrefix};
use core::net::IpAddr;

/// Version of the pinned map layout. Stored in [`DataplaneConfig::layout_version`].
///
/// 2 added the denial prefilter (`JG_PREFILTER`, `JG_PREFILT_CTL`); every map of layout 1 is
/// unchanged, so pinned maps of layout 1 are adopted and upgraded in place
/// ([`UPGRADABLE_FROM`]). 3 added connection limits (`JG_CONN_LIMIT`, `JG_LIM_SYNS`, the
/// `LIMITED` slot bit and the `denied_conn_limit` counter); maps of layouts 1 and 2 mean the
/// same, and the maps added since start out empty (no grant is limited).
pub const LAYOUT_VERSION: u32 = 3;

/// Older layouts whose pinned maps the current program can adopt: their maps mean the same
/// and the maps added since start out empty, which the program treats as "no filter".
pub const UPGRADABLE_FROM: &[u32] = &[1, 2];

/// Map names (also their pin names under the pin directory). At most 15 bytes each.
pub mod names {
    pub const PROTECTED: &str = "JG_PROTECTED";
    pub const GRANTS_V4: &str = "JG_GRANTS_V4";
    pub const GRANTS_V6: &str = "JG_GRANTS_V6";
    pub const GRANTS_LPM_V4: &str = "JG_GRANT_LPM4";
    pub const GRANTS_LPM_V6: &str = "JG_GRANT_LPM6";
    pub const FLOWS: &str = "JG_FLOWS";
    pub const CONFIG: &str = "JG_CONFIG";
    pub const COUNTERS: &str = "JG_COUNTERS";
    pub const EVENTS: &str = "JG_EVENTS";
    pub const RATE: &str = "JG_RATE";
    pub const SRC_RATE: &str = "JG_SRC_RATE";
    pub const CLOCK: &str = "JG_CLOCK";
    pub const PREFILTER: &str = "JG_PREFILTER";
    pub const PREFILTER_CTL: &str = "JG_PREFILT_CTL";
    pub const CONN_LIMIT: &str = "JG_CONN_LIMIT";
    pub const LIMITED_SYNS: &str = "JG_LIM_SYNS";
    /// Every map, for pinning and removal.
    pub const ALL: [&str; 16] = [
        PROTECTED,
        GRANTS_V4,
        GRANTS_V6,
        GRANTS_LPM_V4,
        GRANTS_LPM_V6,
        FLOWS,
        CONFIG,
        COUNTERS,
        EVENTS,
        RATE,
        SRC_RATE,
        CLOCK,
        PREFILTER,
        PREFILTER_CTL,
        CONN_LIMIT,
        LIMITED_SYNS,
    ];
}

/// Program names in the object file.
pub mod programs {
    /// The enforcing program, for devices with an Ethernet header.
    pub const ENFORCE: &str = "jitgate";
    /// The enforcing program for devices without a link-layer header (tunnels): the same
    /// maps and verdicts, parsing from the IP header.
    pub const ENFORCE_L3: &str = "jitgate_l3";
    /// The enforcing program at tcx ingress (Ethernet devices).
    pub const ENFORCE_TC: &str = "jitgate_tc";
    /// The enforcing program at tcx ingress for devices without a link-layer header.
    pub const ENFORCE_TC_L3: &str = "jitgate_tc_l3";
    /// Returns XDP_PASS and nothing else: the floor for benchmarks.
    pub const FLOOR_PASS: &str = "jitgate_floor";
    /// Returns XDP_DROP and nothing else: the receive-side floor for flood benchmarks.
    pub const FLOOR_DROP: &str = "jitgate_drop";
}

/// Default map sizes. Host-length grant maps are hash maps allocated on demand
/// (BPF_F_NO_PREALLOC), so the size is a ceiling, not a cost.
pub mod limits {
    pub const HOST_GRANTS: u32 = 1 << 21;
    pub const PREFIX_GRANTS: u32 = 1 << 18;
    pub const FLOWS: u32 = 1 << 16;
    pub const SRC_RATE: u32 = 1 << 14;
    pub const EVENTS_BYTES: u32 = 1 << 18;
    /// Grants with a connection limit (`JG_CONN_LIMIT`, allocated on demand).
    pub const CONN_LIMITS: u32 = 1 << 16;
    /// SYNs that took a slot of a limited grant, remembered to recognise their
    /// retransmissions (`JG_LIM_SYNS`, LRU).
    pub const LIMITED_SYNS: u32 = 1 << 14;
    /// Blocks of `JG_PREFILTER` for the default limits (see [`prefilter_capacity`]).
    pub const PREFILTER_BLOCKS: u32 =
        2 * (prefilter_capacity(HOST_GRANTS) + prefilter_capacity(PREFIX_GRANTS));

    /// Blocks a prefilter region needs for `keys` keys: a power of two with at most
    /// [`super::prefilter::KEYS_PER_BLOCK`] keys per block.
    pub const fn prefilter_capacity(keys: u32) -> u32 {
        let blocks = keys.div_ceil(super::prefilter::KEYS_PER_BLOCK);
        if blocks <= 1 {
            1
        } else {
            blocks.next_power_of_two()
        }
    }
}

/// `JG_PROTECTED` is an array indexed by `protected_index(proto, port)`; each value is a set
/// of these bits. Absent bit 0 means the port is not under JIT.
pub mod port_flags {
    /// The (protocol, port) pair is under JIT: default deny.
    pub const PROTECTED: u8 = 1;
    /// `on_expiry = cut`: admitted flows stop at the grant's end. Without it (`keep`), they
    /// continue until idle for the configured timeout.
    pub const CUT: u8 = 2;
    /// Some grant on this pair has an IPv4 prefix shorter than /32, so the LPM trie must be
    /// consulted after a host-map miss. Maintained by the map writer, not by policy.
    pub const PREFIX_V4: u8 = 4;
    /// The same for IPv6 prefixes shorter than /128.
    pub const PREFIX_V6: u8 = 8;
    /// Some grant on this pair is for an IPv4 host (/32): the host hash map may hit. Without
    /// it (no grants at all, the usual state of a JIT host) a denial costs no lookup.
    pub const HOST_V4: u8 = 16;
    /// The same for IPv6 hosts (/128).
    pub const HOST_V6: u8 = 32;
    /// Some grant on this pair has a connection limit: a new flow's grant is looked up in
    /// `JG_CONN_LIMIT`. Set before the limited grant's entries are written and cleared only
    /// after they are deleted, so a limited grant is never applied unlimited.
    pub const LIMITED: u8 = 64;
    /// The bits that come from policy (the rest come from the grants).
    pub const POLICY_MASK: u8 = PROTECTED | CUT;
}

/// Number of entries of `JG_PROTECTED`: one per (TCP|UDP, port).
pub const PROTECTED_SLOTS: u32 = 2 * 65536;

/// Index of a (protocol, port) pair in `JG_PROTECTED`. TCP occupies the first 65536 slots and
/// UDP the next. The kernel computes the same with `proto_slot`.
#[inline(always)]
pub const fn protected_index(proto_is_udp: bool, port: u16) -> u32 {
    ((proto_is_udp as u32) << 16) | port as u32
}

/// Key of the IPv4 grant maps: protocol, destination port (network order), source address.
/// Bytes only, no padding, so that the LPM trie compares it as one big-endian bit string.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKeyV4 {
    pub proto: u8,
    pub port: [u8; 2],
    pub addr: [u8; 4],
}

/// Key of the IPv6 grant maps. Same layout rule as [`GrantKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKeyV6 {
    pub proto: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of the key before the address (protocol and port). An LPM key's prefix length is
/// this plus the source prefix length.
pub const KEY_PREFIX_BITS: u32 = 24;

/// Value of every grant map entry.
///
/// `expires_at_ns` is the latest end (CLOCK_BOOTTIME) of all grants whose prefix covers this
/// entry's prefix, for this protocol and port, not only the grants on this exact prefix. A
/// longest-prefix match therefore answers "does ANY active grant cover this source" with one
/// lookup: a /32 that ends can never hide a /24 that is still active.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub expires_at_ns: u64,
    /// Id of the grant that provides `expires_at_ns` (reported in events).
    pub grant_id: [u8; 16],
}

/// A grant map key of either family. The shape user space computes and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantKey {
    V4(GrantKeyV4),
    V6(GrantKeyV6),
}

impl GrantKey {
    /// The key data for (protocol, port, prefix). Host bits are already zero in a
    /// `SourcePrefix`, as the LPM trie requires.
    pub fn new(proto: Protocol, port: Port, prefix: &SourcePrefix) -> Self {
        let port = port.get().to_be_bytes();
        let proto = proto.number();
        match prefix.addr() {
            IpAddr::V4(a) => GrantKey::V4(GrantKeyV4 {
                proto,
                port,
                addr: a.octets(),
            }),
            IpAddr::V6(a) => GrantKey::V6(GrantKeyV6 {
                proto,
                port,
                addr: a.octets(),
            }),
        }
    }

    /// The LPM prefix length of this key for a source prefix of `len` bits.
    pub const fn lpm_prefix_len(len: u8) -> u32 {
        KEY_PREFIX_BITS + len as u32
    }
}

/// Key of `JG_FLOWS`: the 5-tuple as received. IPv4 addresses fill the first four bytes.
/// 8-byte aligned so that the program builds it with word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub family: u8,
    pub proto: u8,
    /// Network order.
    pub sport: [u8; 2],
    /// Network order.
    pub dport: [u8; 2],
    pub _pad: [u8; 2],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Value of `JG_FLOWS`: a flow admitted under a grant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub admitted_at_ns: u64,
    /// Refreshed at most once a second, so the hot path rarely writes.
    pub last_seen_ns: u64,
    /// End of the covering grant as last seen; past it the program looks the grants up again,
    /// so an extension is picked up without user space touching flows.
    pub grant_expires_ns: u64,
    pub grant_id: [u8; 16],
}

/// Value of `JG_CONN_LIMIT`, keyed by the grant id of [`GrantEntry::grant_id`]: a grant that
/// admits only its first `limit` new flows.
///
/// `taken` counts the new flows that asked for a slot. The program increments it with one
/// atomic fetch-and-add and admits the flow only if the value it got was below `limit`, so
/// CPUs racing for the last slot get distinct values and exactly one of them wins. It may
/// grow past `limit` (refused attempts); the connections admitted are `min(taken, limit)`.
/// User space writes an entry once, when the grant is first applied, and never rewrites
/// it: the count survives agent restarts with the pinned map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimit {
    pub limit: u64,
    pub taken: u64,
}

impl ConnLimit {
    /// Connections admitted so far.
    pub const fn admitted(&self) -> u64 {
        if self.taken < self.limit {
            self.taken
        } else {
            self.limit
        }
    }
}

/// Value of `JG_LIM_SYNS`, keyed by [`FlowKey`]: the SYN that took a slot of a limited grant.
/// A SYN with the same 5-tuple, grant and initial sequence number is its retransmission and
/// passes without taking another slot; a new connection reusing the 5-tuple has another
/// initial sequence number and needs a slot of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitedSyn {
    pub grant_id: [u8; 16],
    /// The SYN's sequence number, as its bytes were on the wire.
    pub seq: u32,
    pub _pad: u32,
}

/// The one entry of `JG_CONFIG`, written by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// [`LAYOUT_VERSION`] of whoever created the maps.
    pub layout_version: u32,
    /// Denial events each CPU may emit per second (global budget).
    pub deny_events_per_sec: u32,
    /// A `keep` flow whose grant ended passes while idle less than this.
    pub flow_idle_timeout_ns: u64,
    /// At most one denial event per source (/32, or /64 for IPv6) per this many jiffies.
    pub deny_event_interval_jiffies: u64,
    /// Jiffies per second (the kernel's HZ), for the per-second event budget.
    pub jiffies_per_sec: u64,
    /// A flow's `last_seen_ns` is rewritten only when older than this (idle timeout / 8,
    /// at most one second).
    pub flow_touch_ns: u64,
    /// Upper bound on how far CLOCK_BOOTTIME can have moved while jiffies did not: two
    /// ticks. Zero makes the program read the precise clock for every decision.
    pub clock_slack_ns: u64,
}

impl DataplaneConfig {
    pub const DEFAULT: DataplaneConfig = DataplaneConfig {
        layout_version: LAYOUT_VERSION,
        deny_events_per_sec: 1000,
        flow_idle_timeout_ns: 15 * 60 * 1_000_000_000,
        deny_event_interval_jiffies: 1000,
        jiffies_per_sec: 1000,
        clock_slack_ns: 0,
        flow_touch_ns: 1_000_000_000,
    };
}

/// The denial prefilter: blocked Bloom filters over the keys of the grant maps, so that a
/// packet from a source without a grant is usually denied without touching the large hash
/// map or the trie (whose buckets and nodes miss the cache when there are many grants).
///
/// `JG_PREFILTER` is an array of 64-byte blocks (one cache line each) split into four
/// regions: host keys and shorter-prefix keys, per family. A key is (protocol, port, prefix
/// length, address masked to that length); its hash picks one block of its region and
/// [`prefilter::BITS_PER_KEY`] bits in it. A region uses only its first `mask + 1` blocks,
/// sized by user space to the keys actually installed, so the part the program touches
/// stays small. User space counts how many keys set each bit, so removals clear bits exactly.
/// A region whose geometry word is 0 is not filtering: the program then does the lookups as
/// if the filter had said "maybe", which is always correct (that is the state of maps
/// adopted from layout 1, and the state while a region is rebuilt at another size).
pub mod prefilter {
    pub const HOST_V4: usize = 0;
    pub const PREFIX_V4: usize = 1;
    pub const HOST_V6: usize = 2;
    pub const PREFIX_V6: usize = 3;
    pub const REGIONS: usize = 4;
    /// 64-bit words per block: one 64-byte cache line.
    pub const BLOCK_WORDS: usize = 8;
    pub const BLOCK_BITS: u32 = 512;
    /// Bits set (and tested) per key, all in the key's one block.
    pub const BITS_PER_KEY: u32 = 4;
    /// Keys per block user space aims for: 16 bits per key when a region is full, 32 right
    /// after it doubled (false positives about 0.2 % and well under 0.1 %).
    pub const KEYS_PER_BLOCK: u32 = 32;
    /// At most this many shorter prefix lengths per family are probed per packet; with more
    /// in use, the prefix class is not filtered (the trie is consulted).
    pub const MAX_PROBED_LENS: u32 = 8;
    /// A lengths word with more lengths in use than it holds: "maybe" for every source.
    pub const LENS_OVERFLOW: u64 = u64::MAX;

    /// The lengths word for `lens` (shorter prefix lengths in use): length + 1 per byte from
    /// the low byte, 0 for an empty byte, [`LENS_OVERFLOW`] for more than 8 lengths.
    pub fn lens_word(lens: impl IntoIterator<Item = u8>) -> u64 {
        let mut w = 0u64;
        for (i, l) in lens.into_iter().enumerate() {
            if i as u32 >= MAX_PROBED_LENS {
                return LENS_OVERFLOW;
            }
            w |= u64::from(l.saturating_add(1)) << (8 * i);
        }
        w
    }
    /// Set in a geometry word that is in use.
    pub const VALID: u64 = 1 << 63;

    /// A geometry word: the region starts at block `base` and uses `mask + 1` blocks (a
    /// power of two).
    pub const fn geometry(base: u32, mask: u32) -> u64 {
        VALID | (((base & 0x7fff_ffff) as u64) << 32) | mask as u64
    }

    pub const fn base(geometry: u64) -> u32 {
        ((geometry >> 32) as u32) & 0x7fff_ffff
    }

    pub const fn mask(geometry: u64) -> u32 {
        geometry as u32
    }

    /// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
    #[inline(always)]
    pub const fn mix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }

    #[inline(always)]
    const fn meta(proto: u8, port: u16, len: u8) -> u64 {
        ((proto as u64) << 24) | ((port as u64) << 8) | len as u64
    }

    /// Hash of an IPv4 key. `addr` is the numeric address, already masked to `len` bits.
    #[inline(always)]
    pub const fn hash_v4(seed: u64, proto: u8, port: u16, len: u8, addr: u32) -> u64 {
        mix(seed ^ (meta(proto, port, len) << 32) ^ addr as u64)
    }

    /// Hash of an IPv6 key. `hi`/`lo` are the numeric halves, already masked to `len` bits.
    #[inline(always)]
    pub const fn hash_v6(seed: u64, proto: u8, port: u16, len: u8, hi: u64, lo: u64) -> u64 {
        mix(mix(seed ^ hi ^ (meta(proto, port, len) << 32)) ^ lo)
    }

    /// The block (within the region) a hash selects.
    #[inline(always)]
    pub const fn block_of(h: u64, mask: u32) -> u32 {
        ((h >> 40) as u32) & mask
    }

    /// The `i`-th bit (0..BITS_PER_KEY) a hash selects within its block.
    #[inline(always)]
    pub const fn bit_of(h: u64, i: u32) -> u32 {
        ((h >> (9 * i)) & 511) as u32
    }

    /// `addr` with only its first `len` bits kept.
    #[inline(always)]
    pub const fn mask_v4(addr: u32, len: u8) -> u32 {
        if len == 0 {
            0
        } else if len >= 32 {
            addr
        } else {
            addr & (u32::MAX << (32 - len))
        }
    }

    /// The same for an IPv6 address in two numeric halves.
    #[inline(always)]
    pub const fn mask_v6(hi: u64, lo: u64, len: u8) -> (u64, u64) {
        if len == 0 {
            (0, 0)
        } else if len < 64 {
            (hi & (u64::MAX << (64 - len)), 0)
        } else if len == 64 {
            (hi, 0)
        } else if len < 128 {
            (hi, lo & (u64::MAX << (128 - len)))
        } else {
            (hi, lo)
        }
    }
}

/// One block of `JG_PREFILTER`.
pub type PrefilterBlock = [u64; prefilter::BLOCK_WORDS];

/// The one entry of `JG_PREFILT_CTL`. User space writes it through a shared mapping (the
/// map is BPF_F_MMAPABLE) with one aligned 8-byte store per field, so the program never
/// sees a torn word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefilterCtl {
    /// Per region ([`prefilter::HOST_V4`], ...): 0 (not filtering) or a
    /// [`prefilter::geometry`] word.
    pub geometry: [u64; prefilter::REGIONS],
    /// Shorter prefix lengths in use by some IPv4 grant ([`prefilter::lens_word`]).
    pub lens_v4: u64,
    /// The same for IPv6.
    pub lens_v6: u64,
    pub _reserved: u64,
    /// Hash seed, chosen when the maps are created.
    pub seed: u64,
    /// Blocks reserved per region, in order, from block 0 (user space's bookkeeping; the
    /// program reads only `geometry`).
    pub capacity: [u32; prefilter::REGIONS],
}

/// Per-CPU cache of CLOCK_BOOTTIME (`JG_CLOCK`), refreshed when jiffies change.
///
/// Reading CLOCK_BOOTTIME costs tens of ns in a VM; jiffies cost one load. While jiffies
/// have not changed since `boot_ns` was read, the true time lies in
/// `[boot_ns, boot_ns + clock_slack_ns]`, so any deadline outside that interval is decided
/// exactly without reading the clock. Deadlines inside it read the precise clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ClockCache {
    pub jiffies: u64,
    pub boot_ns: u64,
}

/// Per-CPU state of the denial-event budget (`JG_RATE`). Times are jiffies: a rate limit
/// needs no more precision, and reading jiffies costs one load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RateWindow {
    pub window_start: u64,
    pub count: u64,
    /// The last source bucket that got an event on this CPU, and when: a flood from one
    /// source is suppressed here without a hash lookup.
    pub last_at: u64,
    pub last: SourceBucket,
}

/// Key of `JG_SRC_RATE`: a source bucket for denial events (IPv4 /32, IPv6 /64).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceBucket {
    pub addr: [u8; 16],
    /// 4 or 6, widened to a word so that the key has no padding to clear.
    pub family: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GrantKeyV4 {}
    unsafe impl aya::Pod for GrantKeyV6 {}
    unsafe impl aya::Pod for GrantEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for ConnLimit {}
    unsafe impl aya::Pod for LimitedSyn {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for RateWindow {}
    unsafe impl aya::Pod for ClockCache {}
    unsafe impl aya::Pod for SourceBucket {}
    unsafe impl aya::Pod for PrefilterCtl {}
}

const _: () = {
    assert!(core::mem::size_of::<GrantKeyV4>() == 7);
    assert!(core::mem::size_of::<GrantKeyV6>() == 19);
    assert!(core::mem::size_of::<GrantEntry>() == 24);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<SourceBucket>() == 24);
    assert!(core::mem::size_of::<RateWindow>() == 48);
    assert!(core::mem::size_of::<PrefilterCtl>() == 80);
    assert!(core::mem::size_of::<PrefilterBlock>() == 64);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_keys_are_big_endian_bit_strings() {
        let k = GrantKey::new(
            Protocol::Tcp,
            Port::new(22).unwrap(),
            &"203.0.113.0/24".parse().unwrap(),
        );
        assert_eq!(
            k,
            GrantKey::V4(GrantKeyV4 {
                proto: 6,
                port: [0, 22],
                addr: [203, 0, 113, 0]
            })
        );
        assert_eq!(GrantKey::lpm_prefix_len(24), 48);
        let k6 = GrantKey::new(
            Protocol::Udp,
            Port::new(3389).unwrap(),
            &"2001:db8::/32".parse().unwrap(),
        );
        match k6 {
            GrantKey::V6(k) => {
                assert_eq!(k.proto, 17);
                assert_eq!(k.port, [0x0d, 0x3d]);
                assert_eq!(&k.addr[..4], &[0x20, 0x01, 0x0d, 0xb8]);
            }
            GrantKey::V4(_) => panic!("expected v6"),
        }
    }

    #[test]
    fn lens_words_list_up_to_eight_lengths() {
        assert_eq!(prefilter::lens_word([]), 0);
        assert_eq!(prefilter::lens_word([24, 0]), 25 | 1 << 8);
        assert_eq!(prefilter::lens_word([127]), 128);
        assert_eq!(prefilter::lens_word(0..8), 0x0807_0605_0403_0201);
        assert_eq!(prefilter::lens_word(0..9), prefilter::LENS_OVERFLOW);
    }

    #[test]
    fn masks_keep_the_prefix_bits() {
        assert_eq!(prefilter::mask_v4(0xc633_64ff, 24), 0xc633_6400);
        assert_eq!(prefilter::mask_v4(0xc633_64ff, 0), 0);
        assert_eq!(prefilter::mask_v4(0xc633_64ff, 32), 0xc633_64ff);
        assert_eq!(
            prefilter::mask_v6(u64::MAX, u64::MAX, 48),
            (0xffff_ffff_ffff_0000, 0)
        );
        assert_eq!(prefilter::mask_v6(u64::MAX, u64::MAX, 64), (u64::MAX, 0));
        assert_eq!(
            prefilter::mask_v6(u64::MAX, u64::MAX, 65),
            (u64::MAX, 1 << 63)
        );
        assert_eq!(prefilter::mask_v6(7, 9, 128), (7, 9));
        assert_eq!(prefilter::mask_v6(7, 9, 0), (0, 0));
    }

    #[test]
    fn geometry_words_round_trip() {
        let g = prefilter::geometry(4096, 511);
        assert!(g & prefilter::VALID != 0);
        assert_eq!(prefilter::base(g), 4096);
        assert_eq!(prefilter::mask(g), 511);
    }

    #[test]
    fn protected_index_separates_protocols() {
        assert_eq!(protected_index(false, 22), 22);
        assert_eq!(protected_index(true, 22), 65536 + 22);
        assert!(protected_index(true, 65535) < PROTECTED_SLOTS);
    }
}
