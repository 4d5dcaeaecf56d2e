//! jitgate beside other XDP programs, against the real `xdp-loader` (xdp-tools, installed by
//! `cargo xtask setup`). Which path runs depends on the kernel: libxdp's dispatcher needs
//! freplace extensions (BPF_PROG_TYPE_EXT); a kernel that refuses them (as the development
//! machines' does, to root too) makes `xdp-loader` itself fall back to loading its program
//! alone, which jitgate must not replace: it goes to tcx ingress. Each test asserts the path
//! the kernel allows and says which one ran.
//!
//! Dispatcher path: programs loaded before and after the agent all run, jitgate first, its
//! verdicts unchanged (BPF_PROG_TEST_RUN through the dispatcher the interface holds, the
//! kernel's run counts showing which components ran); a program placed ahead of it and its
//! slot unloaded by `xdp-loader` are reported; enforcement outlives the agent and is adopted.
//! tcx path: the other program keeps the XDP hook and runs, jitgate enforces at tcx on real
//! connections, is reported behind it, outlives the agent and is adopted.

use jitgate_agent::dataplane::{Hook, HookProblem};
use jitgate_agent::{
    BootInstant, Dataplane, DataplaneOptions, GrantId, GrantSpec, MapLimits, XDP_DROP, XDP_PASS,
};
use jitgate_tests::frames::{Frame, L4};
use jitgate_tests::netns::Lab;
use jitgate_tests::{PinGuard, TEST_PIN_ROOT, bpfrun, require_root, unique};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const OBJ_DIR: &str = "/usr/lib/x86_64-linux-gnu/bpf";
const VM4: &str = "192.0.2.1";
const GRANTED: &str = "198.51.100.7";
const NOT_GRANTED: &str = "203.0.113.5";

fn open(pin_dir: &Path) -> Dataplane {
    let mut opts = DataplaneOptions::new(pin_dir);
    opts.limits = MapLimits {
        host_grants: 1 << 12,
        prefix_grants: 1 << 10,
        flows: 1 << 12,
    };
    Dataplane::open(&opts).unwrap()
}

/// One `xdp-loader` at a time in this test binary: the tool takes a lock file under /run,
/// which `ip netns exec` does not separate, and a second one started while the first has
/// not yet written its PID there fails ("Unable to read PID from lockfile").
static LOADER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `xdp-loader ARGS` in the vm's namespace, with libxdp's state on the agent's bpffs.
fn loader(lab: &Lab, bpffs: &Path, args: &[&str]) -> String {
    let _one = LOADER.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.vm, "env"])
        .arg(format!("LIBXDP_BPFFS={}", bpffs.display()))
        .arg("xdp-loader")
        .args(args)
        .output()
        .expect("xdp-loader (xdp-tools) installed by cargo xtask setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "xdp-loader {args:?}: {text}");
    text
}

/// The XDP program the interface runs now.
fn xdp_prog(lab: &Lab, iface: &str) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.vm, "ip", "-d", "link", "show", iface])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text
        .split("prog/xdp id ")
        .nth(1)
        .unwrap_or_else(|| panic!("no XDP program on {iface}: {text}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

fn in_vm<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> T {
    jitgate_agent::netns::run_in(&lab.vm_path(), f).unwrap()
}

fn prog_by_name(name: &str) -> Option<aya::programs::ProgramInfo> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .max_by_key(|p| p.id())
}

fn runs(id: u32) -> u64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map_or(0, |p| p.run_count())
}

/// The chain's verdicts on a granted and a refused SYN to the protected port, and whether
/// the program `after` (a later component) ran for each.
fn check_chain(lab: &Lab, iface: &str, after: u32) {
    let disp = xdp_prog(lab, iface);
    let ok = Frame::new(GRANTED, VM4, L4::syn(22)).build();
    let no = Frame::new(NOT_GRANTED, VM4, L4::syn(22)).build();
    let r0 = runs(after);
    assert_eq!(bpfrun::run_by_id(disp, &ok).unwrap(), XDP_PASS, "granted");
    let r1 = runs(after);
    assert_eq!(bpfrun::run_by_id(disp, &no).unwrap(), XDP_DROP, "refused");
    let r2 = runs(after);
    assert_eq!(r1 - r0, 1, "the later program ran after jitgate passed");
    assert_eq!(r2 - r1, 0, "and not after jitgate dropped");
}

fn setup(lab: &Lab, pin_dir: &Path) -> (Dataplane, PathBuf) {
    let mut dp = open(pin_dir);
    let bpffs = dp.xdp_state_dir().parent().unwrap().to_path_buf();
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let end = BootInstant::now().saturating_add(Duration::from_secs(3600));
    for src in [GRANTED.to_string(), lab.clients[0].v4.to_string()] {
        let spec = GrantSpec {
            protocol: jitgate_common::Protocol::Tcp,
            port: jitgate_common::Port::new(22).unwrap(),
            source: src.parse().unwrap(),
        };
        dp.add_grant(GrantId::random(), spec, end).unwrap();
    }
    (dp, bpffs)
}

/// Real connections to the vm's port 22: from the granted client address, and from a second
/// address of the same client without a grant.
fn check_traffic(lab: &Lab) {
    let dst = std::net::SocketAddr::from((lab.clients[0].vm_v4, 22));
    assert!(
        lab.tcp_connects(0, None, dst, Duration::from_secs(2)),
        "granted connection"
    );
    let other: std::net::IpAddr = "198.51.100.77".parse().unwrap();
    assert!(
        !lab.tcp_connects(0, Some(other), dst, Duration::from_millis(500)),
        "refused connection"
    );
}

fn obj(n: &str) -> String {
    format!("{OBJ_DIR}/{n}")
}

fn env(lab: &Lab) -> (PathBuf, PinGuard) {
    jitgate_agent::bpffs::ensure_pin_dir(Path::new(TEST_PIN_ROOT)).unwrap();
    let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("mp"));
    lab.tcp_server(22, false).unwrap();
    lab.add_client_addr(0, "198.51.100.77/24").unwrap();
    (pin_dir.clone(), PinGuard(pin_dir))
}

/// Another tool's program first, then the agent.
#[test]
fn xdp_loader_program_before_the_agent() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).unwrap();
    let iface = lab.clients[0].vm_iface.clone();
    let (pin_dir, _guard) = env(&lab);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let (mut dp, bpffs) = setup(&lab, &pin_dir);
    loader(
        &lab,
        &bpffs,
        &["load", "-m", "native", &iface, &obj("xdpfilt_alw_udp.o")],
    );
    let other = prog_by_name("xdpfilt_alw_udp").unwrap().id();
    let dispatched = loader(&lab, &bpffs, &["status", &iface]).contains("xdp_dispatcher");
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    if dispatched {
        eprintln!("path: libxdp dispatcher");
        assert_eq!(a.hook, Hook::XdpDispatcher, "{a:?}");
        assert_eq!((a.position, a.programs), (0, 2), "{a:?}");
        check_chain(&lab, &iface, other);
        dispatcher_life(&lab, &iface, &bpffs, &pin_dir, dp, other);
        return;
    }
    eprintln!("path: the kernel refuses extensions, xdp-loader loaded its program alone: tcx");
    assert_eq!(a.hook, Hook::TcxIngress, "{a:?}");
    assert_eq!(
        xdp_prog(&lab, &iface),
        other,
        "the other program keeps the XDP hook"
    );
    let r0 = runs(other);
    check_traffic(&lab);
    assert!(runs(other) > r0, "the XDP program ran on that traffic");
    let st = in_vm(&lab, || dp.hook_status(&iface).unwrap());
    assert_eq!(st.problem, Some(HookProblem::NotFirst), "{st:?}");
    assert_eq!(st.ahead[0].id, other, "{st:?}");
    // Fail closed with no agent, then adopted by the next one.
    drop(dp);
    check_traffic(&lab);
    let mut dp = open(&pin_dir);
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    assert!(a.replaced && a.hook == Hook::TcxIngress, "{a:?}");
    check_traffic(&lab);
    in_vm(&lab, || dp.detach(&iface).unwrap());
    assert_eq!(
        xdp_prog(&lab, &iface),
        other,
        "detach leaves the other program"
    );
    loader(&lab, &bpffs, &["unload", "-a", &iface]);
}

/// The agent first, then another tool's program.
#[test]
fn xdp_loader_program_after_the_agent() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).unwrap();
    let iface = lab.clients[0].vm_iface.clone();
    let (pin_dir, _guard) = env(&lab);
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let (mut dp, bpffs) = setup(&lab, &pin_dir);
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    check_traffic(&lab);
    if a.hook == Hook::XdpDispatcher {
        eprintln!("path: libxdp dispatcher");
        loader(
            &lab,
            &bpffs,
            &["load", "-m", "native", &iface, &obj("xdpfilt_alw_udp.o")],
        );
        let other = prog_by_name("xdpfilt_alw_udp").unwrap().id();
        let st = in_vm(&lab, || dp.hook_status(&iface).unwrap());
        assert_eq!(
            (st.position, st.programs, &st.problem),
            (0, 2, &None),
            "{st:?}"
        );
        check_chain(&lab, &iface, other);
        check_traffic(&lab);
        dispatcher_life(&lab, &iface, &bpffs, &pin_dir, dp, other);
        return;
    }
    // No dispatcher on this kernel: jitgate holds the XDP hook through its own link, and
    // xdp-loader, which would have to replace it, is refused: nothing is silently replaced.
    eprintln!("path: the kernel refuses extensions: jitgate's own XDP link");
    assert_eq!(a.hook, Hook::XdpLink, "{a:?}");
    let ours = xdp_prog(&lab, &iface);
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.vm, "env"])
        .arg(format!("LIBXDP_BPFFS={}", bpffs.display()))
        .args([
            "xdp-loader",
            "load",
            "-m",
            "native",
            &iface,
            &obj("xdpfilt_alw_udp.o"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "xdp-loader must not replace jitgate");
    assert_eq!(xdp_prog(&lab, &iface), ours, "jitgate still holds the hook");
    check_traffic(&lab);
    in_vm(&lab, || dp.detach(&iface).unwrap());
}

/// The dispatcher path's life: a third program after jitgate, one placed ahead (reported),
/// jitgate's slot unloaded by xdp-loader (reported, restored), no agent (still enforcing),
/// the next agent (adopts), detach (the others stay).
fn dispatcher_life(
    lab: &Lab,
    iface: &str,
    bpffs: &Path,
    pin_dir: &Path,
    mut dp: Dataplane,
    first: u32,
) {
    loader(
        lab,
        bpffs,
        &["load", "-m", "native", iface, &obj("xdpfilt_alw_tcp.o")],
    );
    let third = prog_by_name("xdpfilt_alw_tcp").unwrap().id();
    let st = in_vm(lab, || dp.hook_status(iface).unwrap());
    assert_eq!(
        (st.position, st.programs, &st.problem),
        (0, 3, &None),
        "{st:?}"
    );
    check_chain(lab, iface, first);
    check_chain(lab, iface, third);
    loader(
        lab,
        bpffs,
        &[
            "load",
            "-m",
            "native",
            "-P",
            "5",
            iface,
            &obj("xdpfilt_alw_all.o"),
        ],
    );
    let ahead = prog_by_name("xdpfilt_alw_all").unwrap().id();
    let st = in_vm(lab, || dp.hook_status(iface).unwrap());
    assert_eq!(st.problem, Some(HookProblem::NotFirst), "{st:?}");
    assert_eq!((st.position, st.ahead[0].id), (1, ahead), "{st:?}");
    loader(lab, bpffs, &["unload", iface, "-i", &ahead.to_string()]);
    let ours = prog_by_name("jitgate").unwrap().id();
    loader(lab, bpffs, &["unload", iface, "-i", &ours.to_string()]);
    let st = in_vm(lab, || dp.hook_status(iface).unwrap());
    assert!(
        matches!(st.problem, Some(HookProblem::Missing(_))),
        "{st:?}"
    );
    let a = in_vm(lab, || dp.attach(iface).unwrap());
    assert_eq!(a.position, 0);
    drop(dp);
    check_chain(lab, iface, first);
    let mut dp = open(pin_dir);
    let a = in_vm(lab, || dp.attach(iface).unwrap());
    assert!(a.replaced, "{a:?}");
    assert_eq!((a.position, a.programs), (0, 3), "{a:?}");
    check_chain(lab, iface, third);
    in_vm(lab, || dp.detach(iface).unwrap());
    let status = loader(lab, bpffs, &["status", iface]);
    assert!(
        !status.contains("jitgate") && status.contains("xdpfilt_alw_udp"),
        "{status}"
    );
    loader(lab, bpffs, &["unload", "-a", iface]);
}
