//! Where the program runs on an interface, beside other programs: the attach decision, the
//! upgrade of each kind of attachment in place, and the periodic check of position.
//!
//! - The XDP hook is empty or holds a libxdp dispatcher: jitgate joins the dispatcher as a
//!   component with run priority 0 (first), through libxdp's protocol (`multiprog`).
//! - The XDP hook holds a program that is not dispatcher-aware: never replaced; jitgate
//!   attaches at tcx ingress instead, first in the tcx chain.
//! - An interface attached through an XDP link of its own (earlier agents, or a host without
//!   libxdp's dispatcher object) keeps it: the program inside is replaced in place.

use super::{AttachMode, Attachment, Dataplane, ReplaceError, link_pin_name, multiprog, rtnl};
use crate::error::Error;
use crate::link::LinkLayer;
use aya::EbpfLoader;
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{Extension, ProgramError, SchedClassifier, TcAttachType};
use jitgate_common::programs;
use jitgate_proto::{HookKind, InterfaceHook, ProgramAhead};
use std::path::{Path, PathBuf};

/// The hook jitgate runs at on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// An XDP link of its own: the interface's only XDP program.
    XdpLink,
    /// A component (freplace extension) of a libxdp multi-program dispatcher.
    XdpDispatcher,
    /// tcx ingress: the XDP hook holds a program that is not dispatcher-aware.
    TcxIngress,
}

impl Hook {
    pub const fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The hook as the protocol names it.
    pub const fn kind(self) -> HookKind {
        match self {
            Hook::XdpLink => HookKind::Xdp,
            Hook::XdpDispatcher => HookKind::XdpDispatcher,
            Hook::TcxIngress => HookKind::TcxIngress,
        }
    }
}

/// A program that sees packets before jitgate does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ahead {
    pub id: u32,
    pub name: String,
    /// Where it runs: an earlier dispatcher slot, the XDP hook (ahead of any tcx program) or
    /// tcx ingress.
    pub hook: HookKind,
}

/// What the periodic check found wrong with jitgate's place on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookProblem {
    /// jitgate's program no longer runs there: another tool unloaded its dispatcher slot,
    /// replaced the dispatcher, or removed the link.
    Missing(String),
    /// Other programs run first and may pass packets on, drop or redirect them before
    /// jitgate decides (see `ahead`).
    NotFirst,
}

/// jitgate's place on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    pub interface: String,
    pub hook: Hook,
    pub mode: AttachMode,
    /// 0: runs first in its hook's chain.
    pub position: u32,
    /// Programs in that chain, jitgate included.
    pub programs: u32,
    /// Programs that run before it (its hook's chain, and for tcx any XDP program).
    pub ahead: Vec<Ahead>,
    pub problem: Option<HookProblem>,
}

impl HookStatus {
    /// As [`jitgate_proto::AgentMsg::Hooks`] carries it (bounded).
    pub fn to_wire(&self) -> InterfaceHook {
        InterfaceHook {
            interface: self.interface.clone(),
            hook: self.hook.kind(),
            mode: self.mode.wire(),
            position: self.position,
            programs: self.programs,
            ahead: self
                .ahead
                .iter()
                .map(|a| ProgramAhead {
                    id: a.id,
                    name: a.name.clone(),
                    hook: a.hook,
                })
                .collect(),
            problem: self.problem.as_ref().map(|p| match p {
                HookProblem::Missing(why) => jitgate_proto::HookProblem::Missing {
                    reason: why.clone(),
                },
                HookProblem::NotFirst => jitgate_proto::HookProblem::NotFirst,
            }),
        }
        .bounded()
    }

    /// The problem in words (`IFACE: ...`), for a controller older than
    /// [`jitgate_proto::LEVEL_HOOK_REPORTS`] and for `jit-agent status`.
    pub fn problem_words(&self) -> Option<String> {
        let i = &self.interface;
        self.problem.as_ref().map(|p| match p {
            HookProblem::Missing(why) => format!("{i}: {why}"),
            HookProblem::NotFirst => format!(
                "{i}: {} ahead of jitgate at {}: {}",
                self.ahead.len(),
                self.hook.as_str(),
                self.ahead
                    .iter()
                    .map(|a| format!("{} (id {}, {})", a.name, a.id, a.hook))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

fn ifindex(iface: &str) -> Result<u32, Error> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| Error::NoSuchInterface(iface.to_string()))
}

fn ext_pin(pin_dir: &Path, link: LinkLayer) -> PathBuf {
    super::hooks_ext_pin(pin_dir, link)
}

/// Marker pin (the same program) of an interface attached through a dispatcher.
pub(super) fn dispatcher_pin(pin_dir: &Path, iface: &str, mode: AttachMode) -> PathBuf {
    pin_dir.join(link_pin_name("xdpd", iface, mode))
}

/// Pin of an interface's tcx link.
pub(super) fn tcx_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(link_pin_name("tcx", iface, AttachMode::Tcx))
}

fn program_id(pin: &Path) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(pin)
        .ok()
        .map(|i| i.id())
}

fn link_program_id(pin: &Path) -> Option<u32> {
    let l = PinnedLink::from_pin(pin).ok()?;
    let fd: FdLink = l.into();
    fd.info().ok().map(|i| i.program_id())
}

fn io(what: String) -> Error {
    Error::Io(std::io::Error::other(what))
}

impl Dataplane {
    /// The libxdp state directory: `xdp/` on the bpffs that holds the pin directory (set
    /// `LIBXDP_BPFFS` to that bpffs for `xdp-loader` and other libxdp users).
    pub fn xdp_state_dir(&self) -> PathBuf {
        self.xdp_state.clone()
    }

    /// jitgate's extension program for `link`, loaded once per process (against a throwaway
    /// dispatcher: an extension can then be linked into any dispatcher) and pinned, replacing
    /// an older version's pin. Ids of every version seen are remembered as "ours".
    fn our_extension(&mut self, object: &Path, link: LinkLayer) -> Result<Extension, Error> {
        let pin = ext_pin(&self.pin_dir, link);
        if let Some(why) = &self.ext_refused {
            return Err(io(why.clone()));
        }
        if !self.ext_loaded.contains(&link) {
            match self.load_extension(object, link, &pin) {
                Ok(()) => self.ext_loaded.push(link),
                Err(e) => {
                    self.ext_refused = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(Extension::from_pin(&pin)?)
    }

    fn load_extension(&mut self, object: &Path, link: LinkLayer, pin: &Path) -> Result<(), Error> {
        {
            let target = multiprog::load_target(object)?;
            let tprog: &aya::programs::Xdp = target
                .program("xdp_dispatcher")
                .ok_or(Error::MissingProgram("xdp_dispatcher"))?
                .try_into()?;
            let tfd = tprog.fd()?.try_clone().map_err(Error::Io)?;
            let name = link.program();
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(&self.pin_dir)
                .extension(name)
                .load(super::PROGRAM_OBJECT)?;
            let ext: &mut Extension = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()?;
            ext.load(tfd, "prog0")?;
            if let Some(old) = program_id(pin) {
                self.our_ext_ids.insert(old);
            }
            let _ = std::fs::remove_file(pin);
            ext.pin(pin).map_err(|e| Error::Pin {
                path: pin.to_path_buf(),
                reason: e.to_string(),
            })?;
            self.our_ext_ids.insert(ext.info()?.id());
        }
        Ok(())
    }

    /// Attaches through the dispatcher protocol or at tcx, as the interface allows (see the
    /// module doc). `None`: no dispatcher object on this host and the XDP hook is free; the
    /// caller attaches an XDP link of its own.
    pub(super) fn attach_shared(
        &mut self,
        iface: &str,
        link: LinkLayer,
    ) -> Result<Option<Attachment>, Error> {
        // An interface already in a dispatcher or at tcx: replace the program in place.
        if let Some(mode) = [AttachMode::Driver, AttachMode::Generic]
            .into_iter()
            .find(|m| dispatcher_pin(&self.pin_dir, iface, *m).exists())
        {
            let _ = mode;
            if let Some(object) = multiprog::dispatcher_object() {
                return self.join_dispatcher(iface, link, &object).map(Some);
            }
        }
        if tcx_pin(&self.pin_dir, iface).exists() {
            match self.replace_tcx(iface, link) {
                Ok(a) => return Ok(Some(a)),
                Err(ReplaceError::Defunct) => {
                    let _ = std::fs::remove_file(tcx_pin(&self.pin_dir, iface));
                }
                Err(ReplaceError::Other(e)) => return Err(e),
            }
        }
        let idx = ifindex(iface)?;
        let st = rtnl::query(idx).map_err(Error::Io)?;
        // The dispatcher needs libxdp's object and a kernel that loads freplace extensions
        // (some refuse BPF_PROG_TYPE_EXT even to root: libxdp then falls back the same way).
        let object = match multiprog::dispatcher_object() {
            Some(o) => match self.our_extension(&o, link) {
                Ok(_) => Some(o),
                Err(e) => {
                    tracing::warn!(iface, error = %e, "no XDP dispatcher: extensions cannot be loaded here");
                    None
                }
            },
            None => None,
        };
        match (st.main(), object) {
            (None, None) => Ok(None),
            (None, Some(object)) => self.join_dispatcher(iface, link, &object).map(Some),
            (Some(_), Some(object)) => {
                let _lock = multiprog::StateLock::take(&self.xdp_state)?;
                let is_dispatcher = matches!(
                    multiprog::read(&self.xdp_state, idx)?,
                    multiprog::XdpHook::Dispatcher(_)
                );
                drop(_lock);
                if is_dispatcher {
                    self.join_dispatcher(iface, link, &object).map(Some)
                } else {
                    self.attach_tcx(iface, link).map(Some)
                }
            }
            (Some(_), None) => self.attach_tcx(iface, link).map(Some),
        }
    }

    /// Builds a dispatcher holding every other component and jitgate's current program, and
    /// swaps it onto the interface (or puts it there first).
    fn join_dispatcher(
        &mut self,
        iface: &str,
        link: LinkLayer,
        object: &Path,
    ) -> Result<Attachment, Error> {
        let idx = ifindex(iface)?;
        let ours = self.our_extension(object, link)?;
        let our_id = ours.info()?.id();
        let state = self.xdp_state.clone();
        let _lock = multiprog::StateLock::take(&state)?;
        let (old, mut comps, replaced) = match multiprog::read(&state, idx)? {
            multiprog::XdpHook::Empty => (None, Vec::new(), false),
            multiprog::XdpHook::Dispatcher(d) => {
                let mut others = Vec::new();
                let mut had_us = false;
                for c in d.components {
                    if self.our_ext_ids.contains(&c.id) {
                        had_us = true;
                    } else {
                        others.push(c);
                    }
                }
                (Some((d.id, d.driver)), others, had_us)
            }
            multiprog::XdpHook::Other { id, name, .. } => {
                return Err(io(format!(
                    "{iface}: XDP program {name} (id {id}) is not a dispatcher; not replacing it"
                )));
            }
        };
        comps.push(multiprog::Component {
            prog: ours,
            id: our_id,
            name: link.program().to_string(),
            run_prio: multiprog::RUN_PRIO,
            chain_call_actions: multiprog::CHAIN_CALL_ACTIONS,
            flags: 0,
        });
        let programs = comps.len() as u32;
        let (built, ordered) = multiprog::build(object, &state, idx, comps)?;
        let position = ordered.iter().position(|c| c.id == our_id).unwrap_or(0) as u32;
        let driver = match old {
            Some((_, drv)) => {
                multiprog::swap_in(idx, &built, old, drv)?;
                drv
            }
            None => {
                if multiprog::swap_in(idx, &built, None, true).is_ok() {
                    true
                } else {
                    // swap_in unpinned the failed attempt: build again for generic mode.
                    let comps = ordered;
                    let (built2, _) = multiprog::build(object, &state, idx, comps)?;
                    multiprog::swap_in(idx, &built2, None, false)?;
                    false
                }
            }
        };
        if let Some((old_id, _)) = old {
            multiprog::unpin(&state, idx, old_id);
        }
        let mode = if driver {
            AttachMode::Driver
        } else {
            AttachMode::Generic
        };
        // The per-interface marker: the same program, pinned under the interface's name.
        for m in [AttachMode::Driver, AttachMode::Generic] {
            let _ = std::fs::remove_file(dispatcher_pin(&self.pin_dir, iface, m));
        }
        let marker = dispatcher_pin(&self.pin_dir, iface, mode);
        let mut ext = Extension::from_pin(ext_pin(&self.pin_dir, link))?;
        ext.pin(&marker).map_err(|e| Error::Pin {
            path: marker.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(
            iface,
            mode = mode.as_str(),
            position,
            programs,
            "attached in the XDP dispatcher"
        );
        Ok(Attachment {
            interface: iface.to_string(),
            mode,
            link,
            replaced,
            hook: Hook::XdpDispatcher,
            position,
            programs,
        })
    }

    fn tc_program(&mut self, link: LinkLayer) -> Result<&mut SchedClassifier, Error> {
        let name = match link {
            LinkLayer::Ethernet => programs::ENFORCE_TC,
            LinkLayer::Ip => programs::ENFORCE_TC_L3,
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    fn attach_tcx(&mut self, iface: &str, link: LinkLayer) -> Result<Attachment, Error> {
        let pin = tcx_pin(&self.pin_dir, iface);
        let prog = self.tc_program(link)?;
        let id = prog.attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )?;
        let l = prog.take_link(id)?;
        let fd: FdLink = l
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| io(e.to_string()))?;
        fd.pin(&pin).map_err(|e| Error::Pin {
            path: pin.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(
            iface,
            "XDP hook holds a program that is not dispatcher-aware: attached at tcx ingress"
        );
        let (position, programs) = self.tcx_position(iface).unwrap_or((0, 1));
        Ok(Attachment {
            interface: iface.to_string(),
            mode: AttachMode::Tcx,
            link,
            replaced: false,
            hook: Hook::TcxIngress,
            position,
            programs,
        })
    }

    fn replace_tcx(&mut self, iface: &str, link: LinkLayer) -> Result<Attachment, ReplaceError> {
        let pin = tcx_pin(&self.pin_dir, iface);
        let pinned = PinnedLink::from_pin(&pin).map_err(|e| Error::Pin {
            path: pin.clone(),
            reason: e.to_string(),
        })?;
        let tl =
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| io(e.to_string()))?;
        let prog = self.tc_program(link)?;
        let id = match prog.attach_to_link(tl) {
            Ok(id) => id,
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                return Err(ReplaceError::Defunct);
            }
            Err(e) => return Err(Error::Program(e).into()),
        };
        drop(prog.take_link(id).map_err(Error::Program)?);
        let (position, programs) = self.tcx_position(iface).unwrap_or((0, 1));
        Ok(Attachment {
            interface: iface.to_string(),
            mode: AttachMode::Tcx,
            link,
            replaced: true,
            hook: Hook::TcxIngress,
            position,
            programs,
        })
    }

    /// jitgate's position among the tcx ingress programs, and their number.
    fn tcx_position(&self, iface: &str) -> Option<(u32, u32)> {
        let ours = link_program_id(&tcx_pin(&self.pin_dir, iface))?;
        let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress).ok()?;
        let pos = progs.iter().position(|p| p.id() == ours)?;
        Some((pos as u32, progs.len() as u32))
    }

    /// Removes jitgate from the dispatcher on `iface` (the others keep running; with none
    /// left the dispatcher goes too).
    pub(super) fn leave_dispatcher(&mut self, iface: &str) -> Result<(), Error> {
        let idx = ifindex(iface)?;
        let state = self.xdp_state.clone();
        let _lock = multiprog::StateLock::take(&state)?;
        if let multiprog::XdpHook::Dispatcher(d) = multiprog::read(&state, idx)? {
            let others: Vec<_> = d
                .components
                .into_iter()
                .filter(|c| !self.our_ext_ids.contains(&c.id))
                .collect();
            if others.is_empty() {
                multiprog::remove(idx, d.id, d.driver)?;
            } else if let Some(object) = multiprog::dispatcher_object() {
                let (built, _) = multiprog::build(&object, &state, idx, others)?;
                multiprog::swap_in(idx, &built, Some((d.id, d.driver)), d.driver)?;
            }
            multiprog::unpin(&state, idx, d.id);
        }
        for m in [AttachMode::Driver, AttachMode::Generic] {
            let _ = std::fs::remove_file(dispatcher_pin(&self.pin_dir, iface, m));
        }
        Ok(())
    }

    /// Where jitgate runs on `iface` now and what runs before it (call in the interface's
    /// network namespace). For the agent's periodic check, status and heartbeat.
    pub fn hook_status(&mut self, iface: &str) -> Result<HookStatus, Error> {
        let idx = ifindex(iface)?;
        let st = rtnl::query(idx).map_err(Error::Io)?;
        let xdp_ahead = || -> Vec<Ahead> {
            st.main()
                .map(|(id, _)| Ahead {
                    id,
                    name: aya::programs::loaded_programs()
                        .filter_map(Result::ok)
                        .find(|p| p.id() == id)
                        .and_then(|p| p.name_as_str().map(str::to_string))
                        .unwrap_or_default(),
                    hook: HookKind::Xdp,
                })
                .into_iter()
                .collect()
        };
        if let Some((path, mode)) = self.pinned_link(iface) {
            let ours = link_program_id(&path);
            let on = st.main().map(|(id, _)| id);
            let problem = (ours.is_none() || ours != on).then(|| {
                HookProblem::Missing(format!(
                    "the XDP hook runs program {on:?}, jitgate's link {ours:?}"
                ))
            });
            return Ok(HookStatus {
                interface: iface.to_string(),
                hook: Hook::XdpLink,
                mode,
                position: 0,
                programs: 1,
                ahead: Vec::new(),
                problem,
            });
        }
        if tcx_pin(&self.pin_dir, iface).exists() {
            let ahead = xdp_ahead();
            let (status_pos, programs, mut problem) = match self.tcx_position(iface) {
                Some((p, n)) => (p, n, None),
                None => (
                    0,
                    0,
                    Some(HookProblem::Missing(
                        "jitgate's tcx link is no longer attached".into(),
                    )),
                ),
            };
            let mut ahead = ahead;
            if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
                for p in progs.iter().take(status_pos as usize) {
                    ahead.push(Ahead {
                        id: p.id(),
                        name: p.name_as_str().unwrap_or("").to_string(),
                        hook: HookKind::TcxIngress,
                    });
                }
            }
            if problem.is_none() && !ahead.is_empty() {
                problem = Some(HookProblem::NotFirst);
            }
            return Ok(HookStatus {
                interface: iface.to_string(),
                hook: Hook::TcxIngress,
                mode: AttachMode::Tcx,
                position: status_pos,
                programs,
                ahead,
                problem,
            });
        }
        let Some(mode) = [AttachMode::Driver, AttachMode::Generic]
            .into_iter()
            .find(|m| dispatcher_pin(&self.pin_dir, iface, *m).exists())
        else {
            return Err(Error::NotAttached(iface.to_string()));
        };
        let mine = program_id(&dispatcher_pin(&self.pin_dir, iface, mode));
        let state = self.xdp_state.clone();
        let _lock = multiprog::StateLock::take(&state)?;
        let status = match multiprog::read(&state, idx)? {
            multiprog::XdpHook::Dispatcher(d) => {
                let n = d.components.len() as u32;
                match d
                    .components
                    .iter()
                    .position(|c| Some(c.id) == mine || self.our_ext_ids.contains(&c.id))
                {
                    Some(pos) => {
                        let ahead: Vec<Ahead> = d.components[..pos]
                            .iter()
                            .map(|c| Ahead {
                                id: c.id,
                                name: c.name.clone(),
                                hook: HookKind::XdpDispatcher,
                            })
                            .collect();
                        HookStatus {
                            interface: iface.to_string(),
                            hook: Hook::XdpDispatcher,
                            mode,
                            position: pos as u32,
                            programs: n,
                            problem: (!ahead.is_empty()).then_some(HookProblem::NotFirst),
                            ahead,
                        }
                    }
                    None => HookStatus {
                        interface: iface.to_string(),
                        hook: Hook::XdpDispatcher,
                        mode,
                        position: 0,
                        programs: n,
                        ahead: d
                            .components
                            .iter()
                            .map(|c| Ahead {
                                id: c.id,
                                name: c.name.clone(),
                                hook: HookKind::XdpDispatcher,
                            })
                            .collect(),
                        problem: Some(HookProblem::Missing(
                            "jitgate's slot was removed from the XDP dispatcher".into(),
                        )),
                    },
                }
            }
            multiprog::XdpHook::Other { id, name, .. } => HookStatus {
                interface: iface.to_string(),
                hook: Hook::XdpDispatcher,
                mode,
                position: 0,
                programs: 0,
                ahead: xdp_ahead(),
                problem: Some(HookProblem::Missing(format!(
                    "the XDP hook now holds {name} (id {id}), not a dispatcher with jitgate"
                ))),
            },
            multiprog::XdpHook::Empty => HookStatus {
                interface: iface.to_string(),
                hook: Hook::XdpDispatcher,
                mode,
                position: 0,
                programs: 0,
                ahead: Vec::new(),
                problem: Some(HookProblem::Missing(
                    "the XDP dispatcher was removed from the interface".into(),
                )),
            },
        };
        Ok(status)
    }
}
