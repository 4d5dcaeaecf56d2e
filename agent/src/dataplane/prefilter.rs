//! The denial prefilter, user-space side: keeps `JG_PREFILTER` equal to the set of keys in the
//! grant maps (see `jitgate_common::prefilter` for the layout and the kernel's use).
//!
//! Each region is a blocked Bloom filter sized to the keys installed in it. Per bit, a count of
//! the keys that set it lets a removal clear exactly the bits no other key needs. Both maps are
//! written through shared mappings, one atomic 8-byte store per word, so the program never
//! reads a torn word. The ordering rules that keep every installed key visible:
//! - a key's bits are set before it counts as installed and cleared only after its entry is
//!   gone, and a bit shared with another key is never cleared (counts);
//! - a region changes size only while it is not filtering: its geometry word is set to 0
//!   (the program then consults the maps for every packet, as without a filter), the region
//!   is rewritten for the new size, and the new geometry is stored last.

use crate::error::Error;
use jitgate_common::{PrefilterCtl, limits::prefilter_capacity, prefilter};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// A prefilter key: what the program hashes for one grant-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefilterKey {
    pub proto: u8,
    /// Host order.
    pub port: u16,
    pub len: u8,
    pub addr: IpAddr,
}

impl PrefilterKey {
    fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }

    fn region(&self) -> usize {
        match (self.is_v6(), self.len) {
            (false, 32) => prefilter::HOST_V4,
            (false, _) => prefilter::PREFIX_V4,
            (true, 128) => prefilter::HOST_V6,
            (true, _) => prefilter::PREFIX_V6,
        }
    }

    /// Its index in `Prefilter::lens` (IPv4 lengths first, then IPv6).
    fn lens_slot(&self) -> usize {
        if self.is_v6() {
            v6_len_slot(self.len)
        } else {
            usize::from(self.len)
        }
    }

    fn hash(&self, seed: u64) -> u64 {
        match self.addr {
            IpAddr::V4(a) => prefilter::hash_v4(
                seed,
                self.proto,
                self.port,
                self.len,
                prefilter::mask_v4(u32::from(a), self.len),
            ),
            IpAddr::V6(a) => {
                let n = u128::from(a);
                let (hi, lo) = prefilter::mask_v6((n >> 64) as u64, n as u64, self.len);
                prefilter::hash_v6(seed, self.proto, self.port, self.len, hi, lo)
            }
        }
    }
}

/// A shared read-write mapping of a BPF_F_MMAPABLE array map, seen as 64-bit words.
struct Shared {
    ptr: *mut u64,
    bytes: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; every access goes through
// AtomicU64, and the owner (`Prefilter`) is only used through `&mut self`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn map(fd: BorrowedFd<'_>, bytes: usize) -> Result<Self, Error> {
        let page = 4096;
        let bytes = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory; the kernel checks the size
        // against the map and refuses anything out of bounds.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("mapping the prefilter: {e}"),
            )));
        }
        Ok(Shared {
            ptr: ptr.cast(),
            bytes,
        })
    }

    fn words(&self) -> usize {
        self.bytes / 8
    }

    fn word(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.words() {
            return None;
        }
        // SAFETY: in bounds, 8-byte aligned (page-aligned base), alive as long as `self`.
        Some(unsafe { AtomicU64::from_ptr(self.ptr.add(i)) })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.bytes);
        }
    }
}

/// Word indices of the `PrefilterCtl` fields in its mapping.
mod ctl_word {
    pub const GEOMETRY: usize = 0;
    pub const LENS_V4: usize = 4;
    pub const LENS_V6: usize = 5;
    pub const SEED: usize = 7;
    /// Two u32 per word.
    pub const CAPACITY: usize = 8;
}

#[derive(Default)]
struct Region {
    base: u32,
    capacity: u32,
    /// Blocks in use (a power of two), as the program sees them when filtering.
    blocks: u32,
    keys: u64,
    /// Keys per bit of the blocks in use; 255 sticks (never cleared).
    counts: Vec<u8>,
}

/// The prefilter as user space maintains it.
pub struct Prefilter {
    blocks: Shared,
    ctl: Shared,
    seed: u64,
    regions: [Region; prefilter::REGIONS],
    /// Keys per (family, prefix length) among shorter prefixes: v4 at 0..33, v6 at 33..162.
    lens: Vec<u32>,
    /// Whether the counts describe the maps. False after adopting a filter another process
    /// built: bits are then only added, until [`Prefilter::rebuild`] starts over.
    exact: bool,
    /// Benchmarks only: keep every region not filtering.
    disabled: bool,
}

fn v6_len_slot(len: u8) -> usize {
    33 + usize::from(len)
}

impl Prefilter {
    /// Maps the two prefilter maps. `total_blocks` is the block array's size; `host` and
    /// `prefix` the key limits the regions are laid out for when the maps are new.
    /// `adopted`: the grant maps were pinned already and may hold entries this process does
    /// not know yet; a filter must then not start from nothing.
    pub fn open(
        blocks_fd: BorrowedFd<'_>,
        total_blocks: u32,
        ctl_fd: BorrowedFd<'_>,
        host: u32,
        prefix: u32,
        adopted: bool,
    ) -> Result<Self, Error> {
        let blocks = Shared::map(
            blocks_fd,
            total_blocks as usize * prefilter::BLOCK_WORDS * 8,
        )?;
        let ctl = Shared::map(ctl_fd, std::mem::size_of::<PrefilterCtl>())?;
        let mut pf = Prefilter {
            blocks,
            ctl,
            seed: 0,
            regions: Default::default(),
            lens: vec![0; 33 + 129],
            exact: false,
            disabled: false,
        };
        let geometry: Vec<u64> = (0..prefilter::REGIONS)
            .map(|r| pf.ctl_load(ctl_word::GEOMETRY + r))
            .collect();
        let mut capacity = [0u32; prefilter::REGIONS];
        for (r, c) in capacity.iter_mut().enumerate() {
            let w = pf.ctl_load(ctl_word::CAPACITY + r / 2);
            *c = if r % 2 == 0 {
                w as u32
            } else {
                (w >> 32) as u32
            };
        }
        let laid_out = capacity.iter().all(|&c| c > 0)
            && capacity.iter().map(|&c| u64::from(c)).sum::<u64>() <= u64::from(total_blocks);
        if !laid_out || geometry.iter().all(|&g| g == 0) {
            // New maps (or adopted from a layout without a filter): nothing filters yet,
            // so the layout and seed can be chosen freely.
            for r in 0..prefilter::REGIONS {
                pf.ctl_store(ctl_word::GEOMETRY + r, 0);
            }
            if !laid_out {
                capacity = layout(total_blocks, host, prefix);
                pf.ctl_store(
                    ctl_word::CAPACITY,
                    u64::from(capacity[0]) | u64::from(capacity[1]) << 32,
                );
                pf.ctl_store(
                    ctl_word::CAPACITY + 1,
                    u64::from(capacity[2]) | u64::from(capacity[3]) << 32,
                );
            }
            let seed = rand::random::<u64>() | 1;
            pf.ctl_store(ctl_word::SEED, seed);
            pf.seed = seed;
            pf.set_regions(capacity, &[0; prefilter::REGIONS]);
            if adopted {
                // Pinned grant maps without a filter (layout 1): the program keeps looking
                // every key up, as layout 1 did, until `rebuild` is given the full set.
                pf.exact = false;
            } else {
                // Nothing is installed: empty filters.
                pf.exact = true;
                for r in 0..prefilter::REGIONS {
                    pf.rebuild_region(r, std::iter::empty());
                }
            }
        } else {
            // A filter another process built over the pinned maps: keep it filtering, add
            // bits for new keys, clear nothing until the caller rebuilds from the full set.
            pf.seed = pf.ctl_load(ctl_word::SEED);
            let blocks: Vec<u32> = geometry
                .iter()
                .map(|&g| {
                    if g & prefilter::VALID == 0 {
                        0
                    } else {
                        prefilter::mask(g).wrapping_add(1)
                    }
                })
                .collect();
            let mut b = [0u32; prefilter::REGIONS];
            b.copy_from_slice(&blocks);
            pf.set_regions(capacity, &b);
            pf.exact = false;
        }
        Ok(pf)
    }

    fn set_regions(&mut self, capacity: [u32; prefilter::REGIONS], blocks: &[u32]) {
        let mut base = 0u32;
        for r in 0..prefilter::REGIONS {
            self.regions[r] = Region {
                base,
                capacity: capacity[r],
                blocks: blocks[r],
                keys: 0,
                counts: vec![0; blocks[r] as usize * prefilter::BLOCK_BITS as usize],
            };
            base += capacity[r];
        }
    }

    fn ctl_load(&self, i: usize) -> u64 {
        self.ctl.word(i).map_or(0, |w| w.load(Ordering::Acquire))
    }

    fn ctl_store(&self, i: usize, v: u64) {
        if let Some(w) = self.ctl.word(i) {
            w.store(v, Ordering::Release);
        }
    }

    /// Whether every region filters with counts that match the maps.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Blocks in use per region (0: not filtering), for reports and tests.
    pub fn blocks_in_use(&self) -> [u32; prefilter::REGIONS] {
        let mut out = [0; prefilter::REGIONS];
        for (r, o) in out.iter_mut().enumerate() {
            let g = self.ctl_load(ctl_word::GEOMETRY + r);
            *o = if g & prefilter::VALID == 0 {
                0
            } else {
                prefilter::mask(g) + 1
            };
        }
        out
    }

    /// Benchmarks only: stop (or resume) filtering, to measure the lookups without it in the
    /// same run. Resuming rebuilds from `keys`.
    pub fn set_enabled(&mut self, on: bool, keys: impl Iterator<Item = PrefilterKey>) {
        self.disabled = !on;
        if on {
            self.rebuild(keys);
        } else {
            for r in 0..prefilter::REGIONS {
                self.ctl_store(ctl_word::GEOMETRY + r, 0);
            }
        }
    }

    /// Records a key the caller has just added to the grant maps: sets its bits and its
    /// prefix length's bit. A region may then want resizing ([`Prefilter::resize_wanted`]).
    pub fn add(&mut self, key: &PrefilterKey) {
        let r = key.region();
        let h = key.hash(self.seed);
        let reg = &mut self.regions[r];
        reg.keys += 1;
        if reg.blocks > 0 {
            let blk = prefilter::block_of(h, reg.blocks - 1);
            for i in 0..prefilter::BITS_PER_KEY {
                let bit = blk as usize * prefilter::BLOCK_BITS as usize
                    + prefilter::bit_of(h, i) as usize;
                if let Some(c) = reg.counts.get_mut(bit) {
                    *c = c.saturating_add(1);
                }
                let word = (reg.base as usize + blk as usize) * prefilter::BLOCK_WORDS
                    + (prefilter::bit_of(h, i) >> 6) as usize;
                if let Some(w) = self.blocks.word(word) {
                    w.fetch_or(1 << (prefilter::bit_of(h, i) & 63), Ordering::Release);
                }
            }
        }
        if r == prefilter::PREFIX_V4 || r == prefilter::PREFIX_V6 {
            let slot = key.lens_slot();
            if let Some(n) = self.lens.get_mut(slot) {
                *n += 1;
                if *n == 1 {
                    self.store_lens(key.is_v6());
                }
            }
        }
    }

    /// Records a key whose entry the caller has just deleted: clears the bits no other key
    /// needs (when the counts are exact).
    pub fn remove(&mut self, key: &PrefilterKey) {
        let r = key.region();
        let h = key.hash(self.seed);
        let exact = self.exact;
        let reg = &mut self.regions[r];
        reg.keys = reg.keys.saturating_sub(1);
        if exact && reg.blocks > 0 {
            let blk = prefilter::block_of(h, reg.blocks - 1);
            for i in 0..prefilter::BITS_PER_KEY {
                let b = prefilter::bit_of(h, i);
                let bit = blk as usize * prefilter::BLOCK_BITS as usize + b as usize;
                let Some(c) = reg.counts.get_mut(bit) else {
                    continue;
                };
                if *c == u8::MAX || *c == 0 {
                    continue;
                }
                *c -= 1;
                if *c == 0 {
                    let word = (reg.base as usize + blk as usize) * prefilter::BLOCK_WORDS
                        + (b >> 6) as usize;
                    if let Some(w) = self.blocks.word(word) {
                        w.fetch_and(!(1 << (b & 63)), Ordering::Release);
                    }
                }
            }
        }
        if r == prefilter::PREFIX_V4 || r == prefilter::PREFIX_V6 {
            let slot = key.lens_slot();
            if let Some(n) = self.lens.get_mut(slot) {
                *n = n.saturating_sub(1);
                if *n == 0 && exact {
                    self.store_lens(key.is_v6());
                }
            }
        }
    }

    /// Rewrites the lengths word of a family from the counts (one atomic store).
    fn store_lens(&self, v6: bool) {
        let (word, lens) = if v6 {
            (
                ctl_word::LENS_V6,
                (0..128u8)
                    .filter(|l| self.lens[v6_len_slot(*l)] > 0)
                    .collect::<Vec<u8>>(),
            )
        } else {
            (
                ctl_word::LENS_V4,
                (0..32u8)
                    .filter(|l| self.lens[usize::from(*l)] > 0)
                    .collect::<Vec<u8>>(),
            )
        };
        self.ctl_store(word, prefilter::lens_word(lens));
    }

    /// Whether some region holds far more or fewer keys than its size is meant for, so that
    /// the caller should [`Prefilter::rebuild`] (an inexact filter never resizes).
    pub fn resize_wanted(&self) -> bool {
        self.exact
            && !self.disabled
            && self.regions.iter().any(|reg| {
                let want = blocks_for(reg.keys, reg.capacity);
                reg.blocks != want && (want > reg.blocks || want * 4 <= reg.blocks)
            })
    }

    /// Rebuilds every region from `keys`, the complete set of keys in the grant maps, each
    /// sized to its keys. Afterwards the counts are exact.
    pub fn rebuild(&mut self, keys: impl Iterator<Item = PrefilterKey>) {
        let mut per: [Vec<PrefilterKey>; prefilter::REGIONS] = Default::default();
        for k in keys {
            per[k.region()].push(k);
        }
        // Lengths first: every length in use is set before its keys can be looked for.
        for n in self.lens.iter_mut() {
            *n = 0;
        }
        for k in per[prefilter::PREFIX_V4]
            .iter()
            .chain(per[prefilter::PREFIX_V6].iter())
        {
            if let Some(n) = self.lens.get_mut(k.lens_slot()) {
                *n += 1;
            }
        }
        // Not filtering while rewritten, so stale lengths can go too.
        for r in 0..prefilter::REGIONS {
            self.ctl_store(ctl_word::GEOMETRY + r, 0);
        }
        self.store_lens(false);
        self.store_lens(true);
        self.exact = true;
        for (r, keys) in per.into_iter().enumerate() {
            self.rebuild_region(r, keys.into_iter());
        }
    }

    /// Rebuilds the regions that [`Prefilter::resize_wanted`] names, at their new sizes,
    /// from `keys` (the complete set of keys in the grant maps).
    pub fn resize(&mut self, keys: impl Iterator<Item = PrefilterKey>) {
        let want: Vec<bool> = self
            .regions
            .iter()
            .map(|reg| {
                let w = blocks_for(reg.keys, reg.capacity);
                reg.blocks != w && (w > reg.blocks || w * 4 <= reg.blocks)
            })
            .collect();
        let mut per: [Vec<PrefilterKey>; prefilter::REGIONS] = Default::default();
        for k in keys {
            if want[k.region()] {
                per[k.region()].push(k);
            }
        }
        for (r, keys) in per.into_iter().enumerate() {
            if want[r] {
                self.rebuild_region(r, keys.into_iter());
            }
        }
    }

    /// Rewrites region `r` for `keys` (all of its keys) at the size they call for.
    fn rebuild_region(&mut self, r: usize, keys: impl Iterator<Item = PrefilterKey>) {
        self.ctl_store(ctl_word::GEOMETRY + r, 0);
        let keys: Vec<PrefilterKey> = keys.collect();
        let seed = self.seed;
        let reg = &mut self.regions[r];
        let blocks = blocks_for(keys.len() as u64, reg.capacity);
        // Blocks a larger size used before: cleared, so that a later growth starts clean.
        let stale = (reg.base as usize + blocks as usize) * prefilter::BLOCK_WORDS
            ..(reg.base as usize + reg.blocks.max(blocks) as usize) * prefilter::BLOCK_WORDS;
        for i in stale {
            if let Some(w) = self.blocks.word(i) {
                w.store(0, Ordering::Relaxed);
            }
        }
        reg.blocks = blocks;
        reg.keys = keys.len() as u64;
        reg.counts = vec![0; blocks as usize * prefilter::BLOCK_BITS as usize];
        if blocks == 0 {
            return;
        }
        for k in &keys {
            let h = k.hash(seed);
            let blk = prefilter::block_of(h, blocks - 1) as usize;
            for i in 0..prefilter::BITS_PER_KEY {
                let bit = blk * prefilter::BLOCK_BITS as usize + prefilter::bit_of(h, i) as usize;
                if let Some(c) = reg.counts.get_mut(bit) {
                    *c = c.saturating_add(1);
                }
            }
        }
        for (i, chunk) in reg.counts.chunks(64).enumerate() {
            let mut w = 0u64;
            for (b, &c) in chunk.iter().enumerate() {
                if c > 0 {
                    w |= 1 << b;
                }
            }
            if let Some(word) = self
                .blocks
                .word(reg.base as usize * prefilter::BLOCK_WORDS + i)
            {
                word.store(w, Ordering::Relaxed);
            }
        }
        let g = prefilter::geometry(reg.base, blocks - 1);
        if !self.disabled {
            // Last: the words above are visible before the program uses them.
            self.ctl_store(ctl_word::GEOMETRY + r, g);
        }
    }
}

/// Blocks for `keys` keys in a region of `capacity` blocks (0 capacity: not filtering).
fn blocks_for(keys: u64, capacity: u32) -> u32 {
    if capacity == 0 {
        return 0;
    }
    prefilter_capacity(keys.min(u64::from(u32::MAX)) as u32).min(capacity)
}

/// Region sizes for new maps: each family gets host and prefix regions in proportion to the
/// key limits, within `total` blocks.
fn layout(total: u32, host: u32, prefix: u32) -> [u32; prefilter::REGIONS] {
    let mut h = prefilter_capacity(host);
    let mut p = prefilter_capacity(prefix);
    while 2 * (u64::from(h) + u64::from(p)) > u64::from(total) && (h > 1 || p > 1) {
        if h >= p && h > 1 {
            h /= 2;
        } else {
            p /= 2;
        }
    }
    if 2 * (u64::from(h) + u64::from(p)) > u64::from(total) {
        return [0; prefilter::REGIONS];
    }
    [h, p, h, p]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_and_prefers_host_keys() {
        let t = jitgate_common::limits::PREFILTER_BLOCKS;
        let l = layout(
            t,
            jitgate_common::limits::HOST_GRANTS,
            jitgate_common::limits::PREFIX_GRANTS,
        );
        assert_eq!(l.iter().sum::<u32>(), t);
        assert!(l[0] > l[1]);
        let small = layout(64, 1 << 21, 1 << 18);
        assert!(small.iter().sum::<u32>() <= 64);
        assert!(small.iter().all(|&b| b >= 1));
        assert_eq!(layout(2, 10, 10), [0; 4]);
    }

    #[test]
    fn blocks_follow_keys_within_capacity() {
        assert_eq!(blocks_for(0, 8), 1);
        assert_eq!(blocks_for(32, 8), 1);
        assert_eq!(blocks_for(33, 8), 2);
        assert_eq!(blocks_for(10_000, 1 << 16), 512);
        assert_eq!(blocks_for(1_000_000, 1 << 10), 1 << 10);
        assert_eq!(blocks_for(5, 0), 0);
    }
}
