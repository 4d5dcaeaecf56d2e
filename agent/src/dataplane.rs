//! Loads, adopts, attaches and feeds the XDP program.
//!
//! Everything the kernel enforces with is pinned under one pin directory: the maps (by name)
//! and one link (or dispatcher-slot marker) per interface; see `hooks` for where the program
//! runs beside other programs. Dropping a `Dataplane`, or killing the process, leaves
//! enforcement in place; only [`Dataplane::detach`] and [`remove_pins`] take it away.

mod conn_limit;
mod hooks;
mod multiprog;
mod prefilter;
mod rtnl;

use conn_limit::ConnLimits;
pub use hooks::{Ahead, Hook, HookProblem, HookStatus};
use prefilter::Prefilter;
pub use prefilter::PrefilterKey;

use crate::clock::BootInstant;
use crate::cover::{CoverIndex, MapOp, Scope};
use crate::error::Error;
use crate::events::EventStream;
use crate::grant::{GrantId, GrantSpec};
use crate::link::LinkLayer;
use aya::maps::{
    Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key,
};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp, XdpMode, xdp::XdpLink};
use aya::{Ebpf, EbpfLoader};
use jitgate_common::{
    ConnLimit, Counter, DataplaneConfig, FlowEntry, FlowKey, GrantEntry, GrantKey, GrantKeyV4,
    GrantKeyV6, LAYOUT_VERSION, MaxConnections, PROTECTED_SLOTS, Port, ProtectedPort, Protocol,
    UPGRADABLE_FROM, limits, names, port_flags, programs, protected_index,
};
use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The compiled XDP object, built by build.rs from the `jitgate-ebpf` crate.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jitgate"));

/// Map size ceilings, fixed when the maps are first created.
#[derive(Clone, Copy, Debug)]
pub struct MapLimits {
    pub host_grants: u32,
    pub prefix_grants: u32,
    pub flows: u32,
}

impl Default for MapLimits {
    fn default() -> Self {
        MapLimits {
            host_grants: limits::HOST_GRANTS,
            prefix_grants: limits::PREFIX_GRANTS,
            flows: limits::FLOWS,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DataplaneOptions {
    /// Directory on a bpffs in the root mount namespace (created or mounted if needed).
    pub pin_dir: PathBuf,
    pub limits: MapLimits,
    /// Idle timeout for `keep` flows after their grant ended.
    pub flow_idle_timeout: Duration,
    /// Denial events per second per CPU.
    pub deny_events_per_sec: u32,
    /// At most one denial event per source bucket per this interval.
    pub deny_event_interval: Duration,
}

impl DataplaneOptions {
    pub fn new(pin_dir: impl Into<PathBuf>) -> Self {
        let d = DataplaneConfig::DEFAULT;
        DataplaneOptions {
            pin_dir: pin_dir.into(),
            limits: MapLimits::default(),
            flow_idle_timeout: Duration::from_nanos(d.flow_idle_timeout_ns),
            deny_events_per_sec: d.deny_events_per_sec,
            deny_event_interval: Duration::from_secs(1),
        }
    }

    fn config(&self) -> DataplaneConfig {
        let tick = jiffy_ns();
        DataplaneConfig {
            layout_version: LAYOUT_VERSION,
            deny_events_per_sec: self.deny_events_per_sec,
            flow_idle_timeout_ns: self.flow_idle_timeout.as_nanos().min(u64::MAX as u128) as u64,
            deny_event_interval_jiffies: (self.deny_event_interval.as_nanos() / u128::from(tick))
                .min(u64::MAX as u128) as u64,
            jiffies_per_sec: 1_000_000_000 / tick,
            clock_slack_ns: 2 * tick,
            flow_touch_ns: (self.flow_idle_timeout.as_nanos() / 8).min(1_000_000_000) as u64,
        }
    }
}

/// One tick of the kernel's jiffies clock: the resolution of CLOCK_MONOTONIC_COARSE, i.e.
/// 1/HZ. Twice this bounds how far CLOCK_BOOTTIME moves while jiffies stand still. Falls back
/// to 10 ms (HZ=100, the slowest tick Linux has) if it cannot be read, which only makes the
/// program read the precise clock more often.
fn jiffy_ns() -> u64 {
    match nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(ts) => {
            let tick = ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64;
            if (1_000_000..=10_000_000).contains(&tick) {
                tick
            } else {
                10_000_000
            }
        }
        Err(_) => 10_000_000,
    }
}

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP in the driver.
    Driver,
    /// Generic (skb) XDP: the driver has no native support.
    Generic,
    /// tcx ingress (not XDP: the XDP hook holds a program that is not dispatcher-aware).
    Tcx,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Driver => "driver",
            AttachMode::Generic => "generic",
            AttachMode::Tcx => "tcx",
        }
    }

    /// The mode as the protocol names it.
    pub const fn wire(self) -> jitgate_proto::HookMode {
        match self {
            AttachMode::Driver => jitgate_proto::HookMode::Driver,
            AttachMode::Generic => jitgate_proto::HookMode::Generic,
            AttachMode::Tcx => jitgate_proto::HookMode::Tcx,
        }
    }

    fn pin_suffix(self) -> &'static str {
        match self {
            AttachMode::Driver => "drv",
            AttachMode::Generic => "skb",
            AttachMode::Tcx => "in",
        }
    }
}

/// What [`Dataplane::health`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// What is wrong with the program, its maps or links (not with its place at a hook).
    pub problems: Vec<String>,
    /// Where the program runs on each attached interface, with what is wrong there.
    pub hooks: Vec<HookStatus>,
}

impl Health {
    /// The hooks' problems in words (`IFACE: ...`).
    pub fn hook_problems(&self) -> Vec<String> {
        self.hooks
            .iter()
            .filter_map(HookStatus::problem_words)
            .collect()
    }
}

/// The result of an attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    /// Which program runs there: the Ethernet one or the one for tunnels (from the IP header).
    pub link: LinkLayer,
    /// The program already ran there and was replaced in place (atomic: a link update or a
    /// dispatcher swap; no gap).
    pub replaced: bool,
    /// Which hook it runs at, and where in that hook's chain (0: first) of how many.
    pub hook: Hook,
    pub position: u32,
    pub programs: u32,
}

/// Counter totals over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
}

/// One BPF_PROG_TEST_RUN result.
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    /// XDP action (1 = XDP_DROP, 2 = XDP_PASS).
    pub action: u32,
    /// Mean time per repeat, as measured by the kernel.
    pub per_packet: Duration,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

struct GrantMaps {
    host_v4: BpfHashMap<MapData, GrantKeyV4, GrantEntry>,
    host_v6: BpfHashMap<MapData, GrantKeyV6, GrantEntry>,
    lpm_v4: LpmTrie<MapData, GrantKeyV4, GrantEntry>,
    lpm_v6: LpmTrie<MapData, GrantKeyV6, GrantEntry>,
}

/// BPF_NOEXIST: create only. Tells a new entry from a rewrite, which the prefilter needs.
const BPF_NOEXIST: u64 = 1;

fn is_eexist(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

impl GrantMaps {
    /// Writes an entry; returns whether the key is new to the map.
    fn put(&mut self, scope: &Scope, entry: &GrantEntry) -> Result<bool, Error> {
        let p = scope.prefix();
        match GrantKey::new(scope.proto, scope.port, &p) {
            GrantKey::V4(k) if scope.is_host() => {
                upsert(|f| self.host_v4.insert(k, entry, f)).map_err(Error::map(names::GRANTS_V4))
            }
            GrantKey::V6(k) if scope.is_host() => {
                upsert(|f| self.host_v6.insert(k, entry, f)).map_err(Error::map(names::GRANTS_V6))
            }
            GrantKey::V4(k) => {
                let key = Key::new(GrantKey::lpm_prefix_len(p.prefix_len()), k);
                upsert(|f| self.lpm_v4.insert(&key, entry, f))
                    .map_err(Error::map(names::GRANTS_LPM_V4))
            }
            GrantKey::V6(k) => {
                let key = Key::new(GrantKey::lpm_prefix_len(p.prefix_len()), k);
                upsert(|f| self.lpm_v6.insert(&key, entry, f))
                    .map_err(Error::map(names::GRANTS_LPM_V6))
            }
        }
    }

    /// Deletes an entry; returns whether it was there.
    fn delete(&mut self, scope: &Scope) -> Result<bool, Error> {
        let p = scope.prefix();
        let r = match GrantKey::new(scope.proto, scope.port, &p) {
            GrantKey::V4(k) if scope.is_host() => self.host_v4.remove(&k),
            GrantKey::V6(k) if scope.is_host() => self.host_v6.remove(&k),
            GrantKey::V4(k) => self
                .lpm_v4
                .remove(&Key::new(GrantKey::lpm_prefix_len(p.prefix_len()), k)),
            GrantKey::V6(k) => self
                .lpm_v6
                .remove(&Key::new(GrantKey::lpm_prefix_len(p.prefix_len()), k)),
        };
        match r {
            Ok(()) => Ok(true),
            // Already gone is the state we want.
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(Error::map(names::GRANTS_V4)(e)),
        }
    }

    /// Applies `ops` in order, keeping the prefilter in step: a new key's bits are set as
    /// soon as its entry exists, a removed key's bits cleared only once its entry is gone.
    fn apply(&mut self, ops: &[MapOp], pf: &mut Prefilter) -> Result<(), Error> {
        for op in ops {
            match op {
                MapOp::Put(s, e) => {
                    if self.put(s, e)? {
                        pf.add(&prefilter_key(s));
                    }
                }
                MapOp::Delete(s) => {
                    if self.delete(s)? {
                        pf.remove(&prefilter_key(s));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Creates the entry, or rewrites it if it exists; true if it was created.
fn upsert(
    mut insert: impl FnMut(u64) -> Result<(), aya::maps::MapError>,
) -> Result<bool, aya::maps::MapError> {
    match insert(BPF_NOEXIST) {
        Ok(()) => Ok(true),
        Err(e) if is_eexist(&e) => insert(0).map(|()| false),
        Err(e) => Err(e),
    }
}

/// The prefilter key of a grant-map entry.
fn prefilter_key(s: &Scope) -> PrefilterKey {
    let p = s.prefix();
    PrefilterKey {
        proto: s.proto.number(),
        port: s.port.get(),
        len: p.prefix_len(),
        addr: p.addr(),
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    protected_map: Array<MapData, u8>,
    /// What each `JG_PROTECTED` slot holds now (non-zero slots only).
    protected: HashMap<u32, u8>,
    /// Policy bits per slot (PROTECTED, CUT), as set by `set_protected`.
    policy: HashMap<u32, u8>,
    grant_maps: GrantMaps,
    cover: CoverIndex,
    /// Whether `cover` describes every entry of the grant maps. False from adopting pinned
    /// maps until `reconcile_grants` has pruned them: until then `write_slot` keeps the
    /// lookup bits the pinned slots hold, or entries this process does not know yet (the
    /// previous agent's grants, still enforced) would be skipped and their sources dropped.
    grants_known: bool,
    prefilter: Prefilter,
    conn_limits: ConnLimits,
    flows: BpfHashMap<MapData, FlowKey, FlowEntry>,
    config: Array<MapData, DataplaneConfig>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    adopted: bool,
    /// libxdp's state directory (`xdp/` on the pin directory's bpffs).
    xdp_state: PathBuf,
    /// Ids of jitgate's dispatcher components, of this version and pinned by earlier ones.
    our_ext_ids: std::collections::HashSet<u32>,
    /// Link layers whose extension program this process has loaded.
    ext_loaded: Vec<LinkLayer>,
    /// Why extensions cannot be loaded here (the kernel refused one): no dispatcher.
    ext_refused: Option<String>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(Error::map(name))
}

impl Dataplane {
    /// Loads the program, creating its maps or adopting the ones pinned in `pin_dir` (whose
    /// entries keep enforcing throughout). Does not attach.
    pub fn open(opts: &DataplaneOptions) -> Result<Self, Error> {
        let pin_dir = crate::bpffs::ensure_pin_dir(&opts.pin_dir)?;
        let adopted = check_layout(&pin_dir)?;
        let prefilter_blocks = 2
            * (limits::prefilter_capacity(opts.limits.host_grants)
                + limits::prefilter_capacity(opts.limits.prefix_grants));
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(names::GRANTS_V4, opts.limits.host_grants)
            .map_max_entries(names::GRANTS_V6, opts.limits.host_grants)
            .map_max_entries(names::GRANTS_LPM_V4, opts.limits.prefix_grants)
            .map_max_entries(names::GRANTS_LPM_V6, opts.limits.prefix_grants)
            .map_max_entries(names::FLOWS, opts.limits.flows)
            .map_max_entries(names::PREFILTER, prefilter_blocks);
        let mut ebpf = loader.load(PROGRAM_OBJECT)?;
        for name in [programs::ENFORCE, programs::ENFORCE_L3] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()?;
            prog.load()?;
        }

        let protected_map: Array<MapData, u8> = take(&mut ebpf, names::PROTECTED)?;
        let mut protected = HashMap::new();
        if adopted {
            for idx in 0..PROTECTED_SLOTS {
                let v = protected_map
                    .get(&idx, 0)
                    .map_err(Error::map(names::PROTECTED))?;
                if v != 0 {
                    protected.insert(idx, v);
                }
            }
        }
        let grant_maps = GrantMaps {
            host_v4: take(&mut ebpf, names::GRANTS_V4)?,
            host_v6: take(&mut ebpf, names::GRANTS_V6)?,
            lpm_v4: take(&mut ebpf, names::GRANTS_LPM_V4)?,
            lpm_v6: take(&mut ebpf, names::GRANTS_LPM_V6)?,
        };
        let flows = take(&mut ebpf, names::FLOWS)?;
        let conn_limits = ConnLimits::new(take(&mut ebpf, names::CONN_LIMIT)?);
        let mut config: Array<MapData, DataplaneConfig> = take(&mut ebpf, names::CONFIG)?;
        config
            .set(0, opts.config(), 0)
            .map_err(Error::map(names::CONFIG))?;
        let counters = take(&mut ebpf, names::COUNTERS)?;
        let events = Some(take(&mut ebpf, names::EVENTS)?);
        let prefilter = {
            let blocks = ebpf
                .map(names::PREFILTER)
                .ok_or(Error::MissingMap(names::PREFILTER))?;
            let ctl = ebpf
                .map(names::PREFILTER_CTL)
                .ok_or(Error::MissingMap(names::PREFILTER_CTL))?;
            let (Map::Array(blocks), Map::Array(ctl)) = (blocks, ctl) else {
                return Err(Error::MissingMap(names::PREFILTER));
            };
            let total = blocks
                .info()
                .map_err(Error::map(names::PREFILTER))?
                .max_entries();
            Prefilter::open(
                blocks.fd().as_fd(),
                total,
                ctl.fd().as_fd(),
                opts.limits.host_grants,
                opts.limits.prefix_grants,
                adopted,
            )?
        };
        let mut our_ext_ids = std::collections::HashSet::new();
        for l in [LinkLayer::Ethernet, LinkLayer::Ip] {
            if let Ok(i) = aya::programs::ProgramInfo::from_pin(hooks_ext_pin(&pin_dir, l)) {
                our_ext_ids.insert(i.id());
            }
        }
        let xdp_state = bpffs_root(&pin_dir).join("xdp");
        let policy = protected
            .iter()
            .map(|(k, v)| (*k, v & port_flags::POLICY_MASK))
            .filter(|(_, v)| *v != 0)
            .collect();
        Ok(Dataplane {
            ebpf,
            pin_dir,
            protected_map,
            protected,
            policy,
            grant_maps,
            cover: CoverIndex::new(),
            grants_known: !adopted,
            prefilter,
            conn_limits,
            flows,
            config,
            counters,
            events,
            adopted,
            xdp_state,
            our_ext_ids,
            ext_loaded: Vec::new(),
            ext_refused: None,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether `open` found maps already pinned (and kept their entries).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    fn program(&mut self, link: LinkLayer) -> Result<&mut Xdp, Error> {
        let name = link.program();
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()?)
    }

    /// The kernel id of the loaded enforcing program (the Ethernet one).
    pub fn program_id(&mut self) -> Result<u32, Error> {
        Ok(self.program(LinkLayer::Ethernet)?.info()?.id())
    }

    /// Attaches to `iface` (in the calling thread's network namespace), in driver mode if the
    /// driver supports it and generic mode otherwise, and pins the link. The program is the
    /// one for the interface's link type (see [`crate::link`]); a link type whose layout is
    /// unknown is refused rather than enforced with the wrong parser. If a link is already
    /// pinned for `iface`, the program behind it is replaced atomically: no packet is ever
    /// unfiltered.
    pub fn attach(&mut self, iface: &str) -> Result<Attachment, Error> {
        let link = crate::link::link_layer(iface)?;
        if let Some((path, mode)) = self.pinned_link(iface) {
            match self.replace_in_link(&path, link) {
                Ok(()) => {
                    return Ok(Attachment {
                        interface: iface.to_string(),
                        mode,
                        link,
                        replaced: true,
                        hook: Hook::XdpLink,
                        position: 0,
                        programs: 1,
                    });
                }
                // The device this link was made for is gone; the name now belongs to a new
                // one, which has no program yet. The stale pin gives way to a new link.
                Err(ReplaceError::Defunct) => {
                    tracing::info!(iface, "pinned link outlived its device; attaching anew");
                    std::fs::remove_file(&path)?;
                }
                Err(ReplaceError::Other(e)) => return Err(e),
            }
        }
        if let Some(a) = self.attach_shared(iface, link)? {
            return Ok(a);
        }
        // No dispatcher object on this host and the XDP hook is free: a link of our own.
        let prog = self.program(link)?;
        let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Driver),
            Err(driver) => match prog.attach(iface, XdpMode::Skb) {
                Ok(id) => (id, AttachMode::Generic),
                Err(generic) => {
                    return Err(Error::Attach {
                        iface: iface.to_string(),
                        driver: error_chain(&driver),
                        generic: error_chain(&generic),
                    });
                }
            },
        };
        let xdp_link = prog.take_link(id)?;
        let path = self.link_pin_path(iface, mode);
        let fd_link: FdLink =
            xdp_link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| Error::Pin {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        fd_link.pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            reason: std_error_chain(&e),
        })?;
        tracing::info!(
            iface,
            mode = mode.as_str(),
            link = link.as_str(),
            "attached"
        );
        Ok(Attachment {
            interface: iface.to_string(),
            mode,
            link,
            replaced: false,
            hook: Hook::XdpLink,
            position: 0,
            programs: 1,
        })
    }

    /// Swaps the program inside the link pinned at `path` (`bpf_link_update`).
    fn replace_in_link(&mut self, path: &Path, link: LinkLayer) -> Result<(), ReplaceError> {
        let pin_err = |e: &dyn std::fmt::Display| Error::Pin {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| pin_err(&e))?;
        let xdp_link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_err(&e))?;
        let prog = self.program(link)?;
        let id = match prog.attach_to_link(xdp_link) {
            Ok(id) => id,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                return Err(ReplaceError::Defunct);
            }
            Err(e) => return Err(Error::Program(e).into()),
        };
        // The pin keeps the link; drop our handle so only the pin holds it.
        drop(prog.take_link(id).map_err(Error::Program)?);
        Ok(())
    }

    fn link_pin_path(&self, iface: &str, mode: AttachMode) -> PathBuf {
        self.pin_dir.join(link_pin_name("link", iface, mode))
    }

    fn pinned_link(&self, iface: &str) -> Option<(PathBuf, AttachMode)> {
        [AttachMode::Driver, AttachMode::Generic]
            .into_iter()
            .map(|m| (self.link_pin_path(iface, m), m))
            .find(|(p, _)| p.exists())
    }

    /// Interfaces with a pinned link, and their modes.
    pub fn attachments(&self) -> Result<Vec<(String, AttachMode)>, Error> {
        list_links(&self.pin_dir)
    }

    /// What is wrong with enforcement, for the status report: the program not loaded, the
    /// pinned maps not of this layout, an interface in `attached` without its pinned link
    /// (`problems`); and where the program runs on each interface
    /// ([`Dataplane::hook_status`]; call in the interfaces' network namespace), whose
    /// problems (not first at its hook, no longer there) are in `hooks`.
    pub fn health<'a>(&mut self, attached: impl IntoIterator<Item = &'a str>) -> Health {
        let mut h = Health::default();
        if let Err(e) = self.program_id() {
            h.problems.push(format!("program not loaded: {e}"));
        }
        match check_layout(&self.pin_dir) {
            Ok(true) => {}
            Ok(false) => h
                .problems
                .push(format!("maps not pinned under {}", self.pin_dir.display())),
            Err(e) => h.problems.push(format!("pinned maps: {e}")),
        }
        match list_links(&self.pin_dir) {
            Ok(links) => {
                for i in attached {
                    if !links.iter().any(|(name, _)| name == i) {
                        h.problems
                            .push(format!("{i}: link no longer pinned (detached?)"));
                        continue;
                    }
                    // Its place beside other programs: still there, and first?
                    match self.hook_status(i) {
                        Ok(st) => h.hooks.push(st),
                        Err(e) => h.problems.push(format!("{i}: {e}")),
                    }
                }
            }
            Err(e) => h.problems.push(format!("pinned links: {e}")),
        }
        h
    }

    /// Removes enforcement from `iface` (call in its network namespace): unpinning an XDP or
    /// tcx link detaches the program; in a dispatcher, jitgate's slot is removed and the
    /// other programs keep running.
    pub fn detach(&mut self, iface: &str) -> Result<(), Error> {
        if let Some((path, _)) = self.pinned_link(iface) {
            std::fs::remove_file(&path)?;
        } else if hooks::tcx_pin(&self.pin_dir, iface).exists() {
            std::fs::remove_file(hooks::tcx_pin(&self.pin_dir, iface))?;
        } else if [AttachMode::Driver, AttachMode::Generic]
            .iter()
            .any(|m| hooks::dispatcher_pin(&self.pin_dir, iface, *m).exists())
        {
            self.leave_dispatcher(iface)?;
        } else {
            return Err(Error::NotAttached(iface.to_string()));
        }
        tracing::info!(iface, "detached");
        Ok(())
    }

    /// Sets the protected set to exactly `ports`. A pair listed twice keeps the last entry.
    pub fn set_protected(&mut self, ports: &[ProtectedPort]) -> Result<(), Error> {
        let mut want: HashMap<u32, u8> = HashMap::new();
        for p in ports {
            want.insert(slot(p.protocol, p.port), p.flags());
        }
        let old = std::mem::replace(&mut self.policy, want);
        // Protect new pairs before unprotecting old ones.
        let mut order: Vec<u32> = self.policy.keys().copied().collect();
        order.extend(old.keys().filter(|k| !self.policy.contains_key(k)));
        for idx in order {
            self.write_slot(idx)?;
        }
        Ok(())
    }

    /// Writes one `JG_PROTECTED` slot: policy bits plus the grant-derived lookup bits. Called
    /// after the grant maps are written (so a bit never points at a missing entry for long)
    /// and after entries are removed (so no entry is ever skipped while it exists). While
    /// the maps may hold entries `cover` does not know (`grants_known` false), the slot's
    /// lookup bits are only ever added to.
    fn write_slot(&mut self, idx: u32) -> Result<(), Error> {
        let proto = if idx >> 16 == 1 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let mut v = self.policy.get(&idx).copied().unwrap_or(0);
        if let Some(port) = Port::new((idx & 0xffff) as u16) {
            if self.cover.has_prefix_grants(proto, port, false) {
                v |= port_flags::PREFIX_V4;
            }
            if self.cover.has_prefix_grants(proto, port, true) {
                v |= port_flags::PREFIX_V6;
            }
            if self.cover.has_host_grants(proto, port, false) {
                v |= port_flags::HOST_V4;
            }
            if self.cover.has_host_grants(proto, port, true) {
                v |= port_flags::HOST_V6;
            }
        }
        if self.conn_limits.on_slot(idx) {
            v |= port_flags::LIMITED;
        }
        let current = self.protected.get(&idx).copied().unwrap_or(0);
        if !self.grants_known {
            v |= current & !port_flags::POLICY_MASK;
        }
        if current != v {
            self.protected_map
                .set(idx, v, 0)
                .map_err(Error::map(names::PROTECTED))?;
            if v == 0 {
                self.protected.remove(&idx);
            } else {
                self.protected.insert(idx, v);
            }
        }
        Ok(())
    }

    /// Adds a grant (or replaces the one with the same id) ending at `expires`.
    pub fn add_grant(
        &mut self,
        id: GrantId,
        spec: GrantSpec,
        expires: BootInstant,
    ) -> Result<(), Error> {
        self.add_limited_grant(id, spec, expires, None)
    }

    /// Adds a grant that admits at most `limit` new connections (`None`: unlimited). The
    /// counter and the slot's `LIMITED` bit are in place before the grant's entries, so the
    /// kernel never applies the grant without its limit. A grant applied again keeps the
    /// count the kernel has (restart, resend); its limit cannot change.
    pub fn add_limited_grant(
        &mut self,
        id: GrantId,
        spec: GrantSpec,
        expires: BootInstant,
        limit: Option<MaxConnections>,
    ) -> Result<(), Error> {
        if let Some(limit) = limit {
            let idx = slot(spec.protocol, spec.port);
            self.conn_limits.install(id, idx, limit)?;
            self.write_slot(idx)?;
        }
        let previous = self.cover.get(&id);
        let ops = self.cover.insert(id, &spec, expires.0);
        if let Err(e) = self.grant_maps.apply(&ops, &mut self.prefilter) {
            // Restore the index and the maps to the state before this call.
            let undo = match &previous {
                Some((s, exp)) => self.cover.insert(id, s, *exp),
                None => self.cover.remove(&id).unwrap_or_default(),
            };
            let _ = self.grant_maps.apply(&undo, &mut self.prefilter);
            if previous.is_none() && limit.is_some() {
                // No entry names the grant: its counter goes (the LIMITED bit stays until
                // the slot is next written, which only costs a lookup).
                let _ = self.conn_limits.forget(&id);
            }
            return Err(e);
        }
        self.resize_prefilter();
        let idx = slot(spec.protocol, spec.port);
        // The entry is written before the flag that makes the kernel look at it.
        self.write_slot(idx)?;
        if let Some((old, _)) = previous
            && slot(old.protocol, old.port) != idx
        {
            self.write_slot(slot(old.protocol, old.port))?;
        }
        Ok(())
    }

    /// Adds a grant ending at a UTC instant, converted to CLOCK_BOOTTIME now, at write time.
    pub fn add_grant_until(
        &mut self,
        id: GrantId,
        spec: GrantSpec,
        end: std::time::SystemTime,
    ) -> Result<BootInstant, Error> {
        let expires = BootInstant::from_utc(end);
        self.add_grant(id, spec, expires)?;
        Ok(expires)
    }

    /// Removes a grant. Access other grants give is untouched.
    pub fn remove_grant(&mut self, id: &GrantId) -> Result<(), Error> {
        let (spec, _) = self.cover.get(id).ok_or(Error::UnknownGrant(*id))?;
        let ops = self.cover.remove(id).unwrap_or_default();
        self.grant_maps.apply(&ops, &mut self.prefilter)?;
        self.resize_prefilter();
        // The counter goes only once no entry names the grant.
        self.conn_limits.forget(id)?;
        self.write_slot(slot(spec.protocol, spec.port))
    }

    /// A limited grant's count as the kernel has it: `limit` and the slots `taken` (new
    /// flows that asked; `admitted()` of them got one). `None` for unlimited grants.
    pub fn conn_usage(&self, id: &GrantId) -> Option<ConnLimit> {
        self.conn_limits.usage(id)
    }

    /// A grant's protocol, port, source and end, as the maps hold it.
    pub fn grant(&self, id: &GrantId) -> Option<(GrantSpec, BootInstant)> {
        self.cover.get(id).map(|(s, e)| (s, BootInstant(e)))
    }

    pub fn grant_count(&self) -> usize {
        self.cover.len()
    }

    /// Makes the grant maps hold exactly what `grants` require, deleting every other entry.
    /// Used after adopting pinned maps whose contents the caller's journal supersedes.
    ///
    /// Every source the maps or `grants` admit stays admitted until its entry is pruned: the
    /// wanted entries are written and their slots' lookup bits added (none taken away), the
    /// other entries deleted, and only then each slot set to exactly what `grants` need.
    ///
    /// A limited grant keeps the count the pinned `JG_CONN_LIMIT` holds for it (an agent
    /// restart does not give it new connections); counters of other grants are deleted.
    pub fn reconcile_grants(
        &mut self,
        grants: impl IntoIterator<Item = (GrantId, GrantSpec, BootInstant, Option<MaxConnections>)>,
    ) -> Result<(), Error> {
        // Until the prune below, the maps hold entries the new index does not describe.
        self.grants_known = false;
        self.cover = CoverIndex::new();
        let mut limited = Vec::new();
        for (id, spec, exp, limit) in grants {
            self.cover.insert(id, &spec, exp.0);
            if let Some(l) = limit {
                limited.push((id, slot(spec.protocol, spec.port), l));
            }
        }
        // Counters and LIMITED bits before any entry is written.
        self.conn_limits.reset();
        for (id, idx, l) in &limited {
            self.conn_limits.install(*id, *idx, *l)?;
        }
        for (_, idx, _) in &limited {
            self.write_slot(*idx)?;
        }
        let mut want_v4h = std::collections::HashSet::new();
        let mut want_v6h = std::collections::HashSet::new();
        let mut want_v4p = std::collections::HashSet::new();
        let mut want_v6p = std::collections::HashSet::new();
        let desired: Vec<(Scope, GrantEntry)> =
            self.cover.entries().map(|(s, e)| (*s, *e)).collect();
        for (s, e) in &desired {
            if self.grant_maps.put(s, e)? {
                self.prefilter.add(&prefilter_key(s));
            }
            let p = s.prefix();
            let lpm_len = GrantKey::lpm_prefix_len(p.prefix_len());
            match GrantKey::new(s.proto, s.port, &p) {
                GrantKey::V4(k) if s.is_host() => {
                    want_v4h.insert(k);
                }
                GrantKey::V6(k) if s.is_host() => {
                    want_v6h.insert(k);
                }
                GrantKey::V4(k) => {
                    want_v4p.insert((lpm_len, k));
                }
                GrantKey::V6(k) => {
                    want_v6p.insert((lpm_len, k));
                }
            }
        }
        let mut slots: std::collections::HashSet<u32> = self.protected.keys().copied().collect();
        slots.extend(self.cover.ids().map(|(_, proto, port)| slot(proto, port)));
        slots.extend(self.conn_limits.slots());
        for idx in &slots {
            self.write_slot(*idx)?;
        }
        let m = &mut self.grant_maps;
        prune_hash(&mut m.host_v4, &want_v4h);
        prune_hash(&mut m.host_v6, &want_v6h);
        prune_lpm(&mut m.lpm_v4, &want_v4p);
        prune_lpm(&mut m.lpm_v6, &want_v6p);
        // No entry names a grant outside `grants` any more: their counters can go.
        self.conn_limits.prune();
        // The maps now hold exactly `desired`: count the filter from scratch.
        self.prefilter
            .rebuild(desired.iter().map(|(s, _)| prefilter_key(s)));
        self.grants_known = true;
        for idx in slots {
            self.write_slot(idx)?;
        }
        tracing::debug!(
            entries = desired.len(),
            slots = self.protected.len(),
            "grant maps reconciled"
        );
        Ok(())
    }

    /// Resizes the prefilter regions whose key counts left their size's range. Each is
    /// rebuilt from the full key set (the maps' contents) while not filtering.
    fn resize_prefilter(&mut self) {
        if self.prefilter.resize_wanted() {
            let keys: Vec<PrefilterKey> = self
                .cover
                .entries()
                .map(|(s, _)| prefilter_key(s))
                .collect();
            self.prefilter.resize(keys.into_iter());
        }
    }

    /// Blocks of the prefilter in use per region (host IPv4, prefix IPv4, host IPv6, prefix
    /// IPv6; 0: not filtering), and whether its counts match the maps.
    pub fn prefilter_state(&self) -> ([u32; 4], bool) {
        (self.prefilter.blocks_in_use(), self.prefilter.is_exact())
    }

    /// Benchmarks only: turn the denial prefilter off (or back on) to measure the lookups
    /// without it in the same run.
    pub fn set_prefilter_enabled(&mut self, on: bool) {
        let keys: Vec<PrefilterKey> = self
            .cover
            .entries()
            .map(|(s, _)| prefilter_key(s))
            .collect();
        self.prefilter.set_enabled(on, keys.into_iter());
    }

    /// Raw write of one host entry, bypassing the grant table. Benchmarks use it as the floor
    /// of a grant write; nothing else should.
    pub fn raw_put_host_v4(&mut self, key: GrantKeyV4, entry: GrantEntry) -> Result<(), Error> {
        self.grant_maps
            .host_v4
            .insert(key, entry, 0)
            .map_err(Error::map(names::GRANTS_V4))
    }

    /// Raw delete of one host entry, the floor of a grant removal (benchmarks only).
    pub fn raw_delete_host_v4(&mut self, key: &GrantKeyV4) -> Result<(), Error> {
        self.grant_maps
            .host_v4
            .remove(key)
            .map_err(Error::map(names::GRANTS_V4))
    }

    /// Changes the runtime configuration (idle timeout, event limits).
    pub fn set_options(&mut self, opts: &DataplaneOptions) -> Result<(), Error> {
        self.config
            .set(0, opts.config(), 0)
            .map_err(Error::map(names::CONFIG))
    }

    pub fn counters(&self) -> Result<Counters, Error> {
        let mut out = Counters::default();
        for c in Counter::ALL {
            let per_cpu = match self.counters.get(&(c as u32), 0) {
                Ok(v) => v,
                // A counter array adopted from an older layout is shorter: the counters
                // added since read as 0 until the maps are recreated.
                Err(aya::maps::MapError::OutOfBounds { .. } | aya::maps::MapError::KeyNotFound) => {
                    continue;
                }
                Err(e) => return Err(Error::map(names::COUNTERS)(e)),
            };
            out.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The admitted flows the kernel tracks.
    pub fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), Error> {
        match self.flows.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::map(names::FLOWS)(e)),
        }
    }

    /// Inserts a flow directly: adopting established sessions at first attach.
    pub fn insert_flow(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), Error> {
        self.flows
            .insert(key, entry, 0)
            .map_err(Error::map(names::FLOWS))
    }

    /// The event stream. Can be taken once.
    pub fn take_events(&mut self) -> Result<EventStream, Error> {
        let ring = self.events.take().ok_or(Error::MissingMap(names::EVENTS))?;
        Ok(EventStream::new(ring))
    }

    /// Runs the enforcing program on the Ethernet `frame` with BPF_PROG_TEST_RUN, `repeat`
    /// times.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRun, Error> {
        self.test_run_on(LinkLayer::Ethernet, frame, repeat)
    }

    /// The same with the program for `link` (for [`LinkLayer::Ip`], `frame` starts at the IP
    /// header). The kernel's test runner needs at least 14 bytes.
    pub fn test_run_on(
        &mut self,
        link: LinkLayer,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRun, Error> {
        run(self.program(link)?, frame, repeat)
    }

    /// Runs one of the floor programs (`programs::FLOOR_PASS` or `FLOOR_DROP`) the same way,
    /// loading it on first use.
    pub fn test_run_floor(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRun, Error> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        run(prog, frame, repeat)
    }
}

/// Deletes every entry of a host grant map that is not in `keep`.
fn prune_hash<K>(m: &mut BpfHashMap<MapData, K, GrantEntry>, keep: &std::collections::HashSet<K>)
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    let stale: Vec<K> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
}

/// Deletes every entry of a prefix grant map that is not in `keep` (prefix length, key).
fn prune_lpm<K>(m: &mut LpmTrie<MapData, K, GrantEntry>, keep: &std::collections::HashSet<(u32, K)>)
where
    K: aya::Pod + Eq + std::hash::Hash,
{
    let stale: Vec<Key<K>> = m
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
}

fn slot(proto: Protocol, port: Port) -> u32 {
    protected_index(proto == Protocol::Udp, port.get())
}

fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<TestRun, Error> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..TestRunOptions::new()
    })?;
    Ok(TestRun {
        action: r.return_value,
        per_packet: r.duration,
    })
}

fn error_chain(e: &ProgramError) -> String {
    std_error_chain(e)
}

fn std_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Returns whether maps are already pinned (adoption), after checking their layout version:
/// this one, or an older one whose maps this program reads the same (upgraded in place: the
/// maps added since are created empty, and `open` stamps the current version).
fn check_layout(pin_dir: &Path) -> Result<bool, Error> {
    let path = pin_dir.join(names::CONFIG);
    if !path.exists() {
        return Ok(false);
    }
    let mismatch = |found| Error::LayoutMismatch {
        pin_dir: pin_dir.to_path_buf(),
        found,
        expected: LAYOUT_VERSION,
    };
    let data = MapData::from_pin(&path).map_err(Error::map(names::CONFIG))?;
    let arr: Array<MapData, DataplaneConfig> = match Array::try_from(Map::Array(data)) {
        Ok(a) => a,
        // A config of another size is another layout.
        Err(_) => return Err(mismatch(0)),
    };
    let cfg = arr.get(&0, 0).map_err(Error::map(names::CONFIG))?;
    if cfg.layout_version != LAYOUT_VERSION && !UPGRADABLE_FROM.contains(&cfg.layout_version) {
        return Err(mismatch(cfg.layout_version));
    }
    Ok(true)
}

enum ReplaceError {
    /// `bpf_link_update` said ENOLINK: the link's device is gone.
    Defunct,
    Other(Error),
}

impl From<Error> for ReplaceError {
    fn from(e: Error) -> Self {
        ReplaceError::Other(e)
    }
}

/// Interfaces with a pinned link under `pin_dir`, and their modes.
pub fn list_links(pin_dir: &Path) -> Result<Vec<(String, AttachMode)>, Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pin_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(rest) = ["link_", "xdpd_", "tcx_"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
        else {
            continue;
        };
        let (iface, mode) = match rest.rsplit_once('_') {
            Some((i, "drv")) => (i, AttachMode::Driver),
            Some((i, "skb")) => (i, AttachMode::Generic),
            Some((i, "in")) => (i, AttachMode::Tcx),
            _ => continue,
        };
        out.push((decode_iface(iface), mode));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// bpffs refuses names with a dot, which interface names may have (`eth0.100`). `kind`:
/// `link` (an XDP link), `xdpd` (a dispatcher slot's marker), `tcx` (a tcx link).
fn link_pin_name(kind: &str, iface: &str, mode: AttachMode) -> String {
    let enc = iface.replace('%', "%25").replace('.', "%2e");
    format!("{kind}_{enc}_{}", mode.pin_suffix())
}

/// Pin of jitgate's dispatcher component program for `link` (see `hooks`).
fn hooks_ext_pin(pin_dir: &Path, link: LinkLayer) -> PathBuf {
    pin_dir.join(match link {
        LinkLayer::Ethernet => "xdpd_prog_eth",
        LinkLayer::Ip => "xdpd_prog_l3",
    })
}

/// The mount point of the bpffs holding `dir`: the root libxdp's `LIBXDP_BPFFS` names.
fn bpffs_root(dir: &Path) -> PathBuf {
    let mut root = dir.to_path_buf();
    while let Some(parent) = root.parent() {
        if crate::bpffs::is_bpffs(parent) {
            root = parent.to_path_buf();
        } else {
            break;
        }
    }
    root
}

fn decode_iface(enc: &str) -> String {
    enc.replace("%2e", ".").replace("%25", "%")
}

/// Removes every link and map pinned under `pin_dir`, and the directory if it is then
/// empty: enforcement ends on every interface it covered.
pub fn remove_pins(pin_dir: &Path) -> Result<(), Error> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if ["link_", "xdpd_", "tcx_"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            std::fs::remove_file(path)?;
        }
    }
    for name in names::ALL {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(p)?;
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}
