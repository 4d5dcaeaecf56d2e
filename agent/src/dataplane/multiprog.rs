//! libxdp's multi-program dispatcher protocol (version 2, as `xdp-loader` of xdp-tools 1.3
//! speaks it), so that jitgate shares an interface's XDP hook with programs other tools
//! load, and runs first.
//!
//! The dispatcher is libxdp's own object (`xdp-dispatcher.o`, shipped with libxdp): an XDP
//! program that calls ten stub functions `prog0`..`prog9` in turn; each component program is
//! an freplace extension of one stub, and the dispatcher goes on to the next component only
//! for the actions in that component's `chain_call_actions`. Its read-only `.rodata` holds
//! the configuration (magic, version, number of components, and per component the chain-call
//! actions, run priority and flags). Components are ordered by run priority, then name.
//!
//! State lives on a bpffs under `xdp/` (libxdp reads `$LIBXDP_BPFFS/xdp`): per dispatcher a
//! directory `dispatch-IFINDEX-DISPATCHERID` with `progN-link` (the freplace link) and
//! `progN-prog` (the component) pinned, all changed under an exclusive `flock` on `xdp/`.
//! Changing the set of components means building a new dispatcher with all of them linked,
//! pinning it, swapping it onto the interface with `XDP_FLAGS_REPLACE` (netlink, expected old
//! program: no packet ever misses the filter) and unpinning the old one.

use super::rtnl;
use crate::error::Error;
use aya::EbpfLoader;
use aya::programs::links::FdLink;
use aya::programs::{Extension, ProgramFd, ProgramInfo, Xdp};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub const MAGIC: u8 = 236;
pub const VERSION: u8 = 2;
/// Returned by an empty stub: always in every component's chain-call actions, so that a
/// slot whose program was detached lets the chain go on.
pub const RETVAL: u32 = 31;
pub const MAX_PROGS: usize = 10;
const XDP_PASS: u32 = 2;
/// jitgate's run priority: ahead of libxdp's default (50) and of anything an operator does
/// not deliberately place before it; a program given a lower one runs first, and the agent
/// reports it (`HookProblem::NotFirst`). Ties are broken by name.
pub const RUN_PRIO: u32 = 10;
/// jitgate hands a packet on only when it passes it; a drop ends the chain.
pub const CHAIN_CALL_ACTIONS: u32 = 1 << XDP_PASS;

/// `struct xdp_dispatcher_config`, the dispatcher's `.rodata`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub magic: u8,
    pub dispatcher_version: u8,
    pub num_progs_enabled: u8,
    pub is_xdp_frags: u8,
    pub chain_call_actions: [u32; MAX_PROGS],
    pub run_prios: [u32; MAX_PROGS],
    pub program_flags: [u32; MAX_PROGS],
}

// SAFETY: plain integers, no padding (4 bytes, then three arrays of u32).
unsafe impl aya::Pod for Config {}

const _: () = assert!(std::mem::size_of::<Config>() == 124);

/// Where libxdp's dispatcher object is installed (Debian's libxdp1, other layouts), after
/// `$LIBXDP_OBJECT_PATH`.
const OBJECT_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/bpf",
    "/usr/lib/aarch64-linux-gnu/bpf",
    "/usr/lib/bpf",
    "/usr/lib64/bpf",
    "/usr/local/lib/bpf",
];

/// The dispatcher object, if libxdp is installed.
pub fn dispatcher_object() -> Option<PathBuf> {
    let env = std::env::var_os("LIBXDP_OBJECT_PATH").map(PathBuf::from);
    env.into_iter()
        .chain(OBJECT_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("xdp-dispatcher.o"))
        .find(|p| p.is_file())
}

/// One component of a dispatcher.
pub struct Component {
    pub prog: Extension,
    pub id: u32,
    pub name: String,
    pub run_prio: u32,
    /// Without the [`RETVAL`] bit.
    pub chain_call_actions: u32,
    pub flags: u32,
}

impl Component {
    fn key(&self) -> (u32, &str, u32) {
        (self.run_prio, self.name.as_str(), self.id)
    }
}

/// A dispatcher attached to an interface, with its components in run order.
pub struct Dispatcher {
    pub id: u32,
    pub driver: bool,
    pub components: Vec<Component>,
}

/// What an interface's XDP hook holds.
pub enum XdpHook {
    Empty,
    /// A program that is not a (version 2) dispatcher: its id and name.
    Other {
        id: u32,
        name: String,
    },
    Dispatcher(Dispatcher),
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn prog_err(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> Error + '_ {
    move |e| Error::Io(std::io::Error::other(format!("{what}: {e}")))
}

/// The exclusive lock on the state directory that every libxdp user takes.
pub struct StateLock(OwnedFd);

impl StateLock {
    pub fn take(state: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(state).map_err(io_err("creating the libxdp state directory"))?;
        let f = std::fs::File::open(state).map_err(io_err("opening the libxdp state directory"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("locking the libxdp state directory")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(StateLock(OwnedFd::from(f)))
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor (closing it would too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn dir_of(state: &Path, ifindex: u32, dispatcher: u32) -> PathBuf {
    state.join(format!("dispatch-{ifindex}-{dispatcher}"))
}

/// The dispatcher configuration of program `info`, if it is a version-2 dispatcher.
fn config_of(info: &ProgramInfo) -> Option<Config> {
    if info.name_as_str() != Some("xdp_dispatcher") {
        return None;
    }
    let maps = info.map_ids().ok()??;
    let [map] = maps[..] else {
        return None;
    };
    let data = aya::maps::MapData::from_id(map).ok()?;
    let arr: aya::maps::Array<_, Config> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).ok()?;
    let c = arr.get(&0, 0).ok()?;
    (c.magic == MAGIC && c.dispatcher_version == VERSION).then_some(c)
}

/// Reads what `ifindex`'s XDP hook holds; with a dispatcher, its components from the
/// pinned state (caller holds the lock).
pub fn read(state: &Path, ifindex: u32) -> Result<XdpHook, Error> {
    let st = rtnl::query(ifindex).map_err(io_err("reading the interface's XDP program"))?;
    let Some((id, driver)) = st.main() else {
        return Ok(XdpHook::Empty);
    };
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id);
    let Some(info) = info else {
        return Ok(XdpHook::Other {
            id,
            name: String::new(),
        });
    };
    let name = info.name_as_str().unwrap_or("").to_string();
    let Some(config) = config_of(&info) else {
        return Ok(XdpHook::Other { id, name });
    };
    let dir = dir_of(state, ifindex, id);
    let mut components = Vec::new();
    for i in 0..usize::from(config.num_progs_enabled).min(MAX_PROGS) {
        let pin = dir.join(format!("prog{i}-prog"));
        let Ok(prog) = Extension::from_pin(&pin) else {
            // Not pinned where libxdp keeps it: not a dispatcher we can change safely.
            return Ok(XdpHook::Other { id, name });
        };
        let pinfo = prog.info().map_err(prog_err("component info"))?;
        components.push(Component {
            id: pinfo.id(),
            name: pinfo.name_as_str().unwrap_or("").to_string(),
            prog,
            run_prio: config.run_prios[i],
            chain_call_actions: config.chain_call_actions[i] & !(1 << RETVAL),
            flags: config.program_flags[i],
        });
    }
    Ok(XdpHook::Dispatcher(Dispatcher {
        id,
        driver,
        components,
    }))
}

/// A built dispatcher, loaded and with its components linked, not yet on the interface.
pub struct Built {
    ebpf: aya::Ebpf,
    dir: PathBuf,
}

impl Built {
    pub fn fd(&self) -> Result<&ProgramFd, Error> {
        let p: &Xdp = self
            .ebpf
            .program("xdp_dispatcher")
            .ok_or(Error::MissingProgram("xdp_dispatcher"))?
            .try_into()?;
        Ok(p.fd()?)
    }
}

/// Loads a dispatcher for `components` (sorted here into run order), links every component
/// and pins the state under `state` (caller holds the lock). Returns the components in run
/// order too.
/// Loads the dispatcher object with one (empty) slot, as a target to load extensions
/// against: an extension is verified against one target and can then be linked into any
/// dispatcher's slots.
pub fn load_target(object: &Path) -> Result<aya::Ebpf, Error> {
    let config = Config {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: 1,
        ..Config::default()
    };
    Ok(load_dispatcher(object, &config)?.0)
}

/// The dispatcher object loaded with `config` as its `.rodata`; its program's fd and id.
fn load_dispatcher(object: &Path, config: &Config) -> Result<(aya::Ebpf, ProgramFd, u32), Error> {
    let mut ebpf = EbpfLoader::new()
        .override_global("conf", config, true)
        .load_file(object)?;
    let prog: &mut Xdp = ebpf
        .program_mut("xdp_dispatcher")
        .ok_or(Error::MissingProgram("xdp_dispatcher"))?
        .try_into()?;
    prog.load()?;
    let fd = prog.fd()?.try_clone().map_err(io_err("dispatcher fd"))?;
    let id = prog.info()?.id();
    Ok((ebpf, fd, id))
}

pub fn build(
    object: &Path,
    state: &Path,
    ifindex: u32,
    mut components: Vec<Component>,
) -> Result<(Built, Vec<Component>), Error> {
    if components.len() > MAX_PROGS {
        return Err(Error::Io(std::io::Error::other(format!(
            "an XDP dispatcher holds at most {MAX_PROGS} programs"
        ))));
    }
    components.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut config = Config {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: components.len() as u8,
        is_xdp_frags: 0,
        ..Config::default()
    };
    for (i, c) in components.iter().enumerate() {
        config.chain_call_actions[i] = c.chain_call_actions | 1 << RETVAL;
        config.run_prios[i] = c.run_prio;
        config.program_flags[i] = c.flags;
    }
    let (ebpf, fd, id) = load_dispatcher(object, &config)?;
    let dir = dir_of(state, ifindex, id);
    std::fs::create_dir_all(&dir).map_err(io_err("creating the dispatcher's pin directory"))?;
    let built = Built { ebpf, dir };
    let res = (|| {
        for (i, c) in components.iter_mut().enumerate() {
            let slot = format!("prog{i}");
            let link_id = c
                .prog
                .attach_to_program(&fd, &slot)
                .map_err(prog_err("linking a component into the dispatcher"))?;
            let link: FdLink = c.prog.take_link(link_id)?.into();
            let lp = built.dir.join(format!("{slot}-link"));
            link.pin(&lp).map_err(|e| Error::Pin {
                path: lp.clone(),
                reason: e.to_string(),
            })?;
            let pp = built.dir.join(format!("{slot}-prog"));
            c.prog.pin(&pp).map_err(|e| Error::Pin {
                path: pp.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok::<(), Error>(())
    })();
    if let Err(e) = res {
        unpin_dir(&built.dir);
        return Err(e);
    }
    Ok((built, components))
}

/// Puts `new` on the interface in place of `old` (atomically, netlink `XDP_FLAGS_REPLACE`),
/// or as its first XDP program (`old` None: `XDP_FLAGS_UPDATE_IF_NOEXIST`). On failure the
/// new dispatcher's pins are removed and the interface is unchanged.
pub fn swap_in(
    ifindex: u32,
    new: &Built,
    old: Option<(u32, bool)>,
    driver: bool,
) -> Result<(), Error> {
    let mode = if driver {
        rtnl::XDP_FLAGS_DRV_MODE
    } else {
        rtnl::XDP_FLAGS_SKB_MODE
    };
    let res = match old {
        None => rtnl::attach(
            ifindex,
            Some(new.fd()?.as_fd()),
            mode | rtnl::XDP_FLAGS_UPDATE_IF_NOEXIST,
            None,
        ),
        Some((old_id, _)) => {
            let old_fd = prog_fd_by_id(old_id)?;
            rtnl::attach(
                ifindex,
                Some(new.fd()?.as_fd()),
                mode | rtnl::XDP_FLAGS_REPLACE,
                Some(old_fd.as_fd()),
            )
        }
    };
    if let Err(e) = res {
        unpin_dir(&new.dir);
        return Err(io_err("attaching the XDP dispatcher")(e));
    }
    Ok(())
}

/// Takes the dispatcher `old` off the interface entirely (no component left).
pub fn remove(ifindex: u32, old_id: u32, driver: bool) -> Result<(), Error> {
    let mode = if driver {
        rtnl::XDP_FLAGS_DRV_MODE
    } else {
        rtnl::XDP_FLAGS_SKB_MODE
    };
    let old_fd = prog_fd_by_id(old_id)?;
    rtnl::attach(
        ifindex,
        None,
        mode | rtnl::XDP_FLAGS_REPLACE,
        Some(old_fd.as_fd()),
    )
    .map_err(io_err("detaching the XDP dispatcher"))
}

/// Removes a replaced dispatcher's pins (its links go, and with them its hold on the
/// components).
pub fn unpin(state: &Path, ifindex: u32, dispatcher: u32) {
    unpin_dir(&dir_of(state, ifindex, dispatcher));
}

fn unpin_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn prog_fd_by_id(id: u32) -> Result<OwnedFd, Error> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| Error::Io(std::io::Error::other(format!("program {id} is gone"))))?;
    let fd = info.fd()?;
    // An owned duplicate, independent of aya's wrapper.
    let dup = fd
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err("duplicating a program fd"))?;
    Ok(dup)
}
