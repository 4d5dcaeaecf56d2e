//! jitgate beside other XDP programs, through libxdp's dispatcher protocol, against the real
//! `xdp-loader` (xdp-tools, installed by `cargo xtask setup`): programs loaded before and
//! after the agent all run, jitgate first, its verdicts unchanged; a program placed ahead of
//! it and its slot unloaded by `xdp-loader` are reported by the agent's check; enforcement
//! outlives the agent and is adopted by the next one. Verdicts are run through the
//! dispatcher the interface holds at that moment (BPF_PROG_TEST_RUN), with the kernel's run
//! counts showing which components ran.

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

/// `xdp-loader ARGS` in the vm's namespace, with libxdp's state on the agent's bpffs.
fn loader(lab: &Lab, bpffs: &Path, args: &[&str]) -> String {
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
    after
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
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

#[test]
fn shares_the_xdp_hook_with_xdp_loader_programs() {
    if !require_root() {
        return;
    }
    let obj = |n: &str| format!("{OBJ_DIR}/{n}");
    assert!(
        Path::new(&obj("xdp-dispatcher.o")).exists(),
        "libxdp's dispatcher object (xdp-tools, via cargo xtask setup)"
    );
    jitgate_agent::bpffs::ensure_pin_dir(Path::new(TEST_PIN_ROOT)).unwrap();
    let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("mp"));
    let _guard = PinGuard(pin_dir.clone());
    let lab = Lab::new(1).unwrap();
    let iface = lab.clients[0].vm_iface.clone();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();

    let mut dp = open(&pin_dir);
    let bpffs = dp.xdp_state_dir().parent().unwrap().to_path_buf();
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let end = BootInstant::now().saturating_add(Duration::from_secs(3600));
    let spec = GrantSpec {
        protocol: jitgate_common::Protocol::Tcp,
        port: jitgate_common::Port::new(22).unwrap(),
        source: GRANTED.parse().unwrap(),
    };
    dp.add_grant(GrantId::random(), spec, end).unwrap();

    // Before the agent: another tool's program (xdp-filter's deny-mode UDP filter, empty:
    // it passes everything and counts).
    loader(&lab, &bpffs, &["load", "-m", "native", &iface, &obj("xdpfilt_dny_udp.o")]);
    let first = prog_by_name("xdpfilt_dny_udp").unwrap().id();
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    assert_eq!(a.hook, Hook::XdpDispatcher, "{a:?}");
    assert_eq!((a.position, a.programs), (0, 2), "{a:?}");
    check_chain(&lab, &iface, first);
    let status = loader(&lab, &bpffs, &["status", &iface]);
    assert!(
        status.contains("jitgate") && status.contains("xdpfilt_dny_udp"),
        "xdp-loader sees both: {status}"
    );

    // After the agent: a third program, loaded by xdp-loader into jitgate's dispatcher.
    loader(&lab, &bpffs, &["load", "-m", "native", &iface, &obj("xdpfilt_dny_tcp.o")]);
    let third = prog_by_name("xdpfilt_dny_tcp").unwrap().id();
    let st = in_vm(&lab, || dp.hook_status(&iface).unwrap());
    assert_eq!((st.position, st.programs, &st.problem), (0, 3, &None), "{st:?}");
    check_chain(&lab, &iface, first);
    check_chain(&lab, &iface, third);

    // A program placed ahead of jitgate (priority 5 < jitgate's 10) is reported.
    loader(
        &lab,
        &bpffs,
        &["load", "-m", "native", "-P", "5", &iface, &obj("xdpfilt_dny_all.o")],
    );
    let ahead = prog_by_name("xdpfilt_dny_all").unwrap().id();
    let st = in_vm(&lab, || dp.hook_status(&iface).unwrap());
    assert_eq!(st.problem, Some(HookProblem::NotFirst), "{st:?}");
    assert_eq!(st.position, 1);
    assert_eq!(st.ahead[0].id, ahead, "{st:?}");
    check_chain(&lab, &iface, third);
    loader(&lab, &bpffs, &["unload", &iface, "-i", &ahead.to_string()]);

    // jitgate's slot unloaded by another tool: reported, and restored by attaching again.
    let ours = prog_by_name("jitgate").unwrap().id();
    loader(&lab, &bpffs, &["unload", &iface, "-i", &ours.to_string()]);
    let st = in_vm(&lab, || dp.hook_status(&iface).unwrap());
    assert!(
        matches!(st.problem, Some(HookProblem::Missing(_))),
        "{st:?}"
    );
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    assert_eq!(a.position, 0);
    check_chain(&lab, &iface, first);

    // Fail closed: the agent goes away, the chain keeps enforcing; the next one adopts it.
    drop(dp);
    check_chain(&lab, &iface, first);
    let mut dp = open(&pin_dir);
    let a = in_vm(&lab, || dp.attach(&iface).unwrap());
    assert!(a.replaced, "adopted: its old slot replaced in place: {a:?}");
    assert_eq!((a.position, a.programs), (0, 3), "{a:?}");
    check_chain(&lab, &iface, third);
    let status = loader(&lab, &bpffs, &["status", &iface]);
    assert_eq!(status.matches("jitgate").count(), 1, "one jitgate slot: {status}");

    // Detach: jitgate leaves, the others keep running.
    in_vm(&lab, || dp.detach(&iface).unwrap());
    let status = loader(&lab, &bpffs, &["status", &iface]);
    assert!(!status.contains("jitgate"), "{status}");
    assert!(status.contains("xdpfilt_dny_udp"), "{status}");
    loader(&lab, &bpffs, &["unload", "-a", &iface]);
}
