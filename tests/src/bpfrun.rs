//! BPF_PROG_TEST_RUN on any loaded program by id: the program a pinned link or an
//! interface runs right now, whoever loaded it (aya runs only programs it loaded itself).

use std::os::fd::{AsFd, AsRawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The test-run part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs program `id` once on `frame`; returns its return value (the XDP action).
pub fn run_by_id(id: u32, frame: &[u8]) -> std::io::Result<u32> {
    run_fd(program_fd(id)?.as_fd(), frame)
}

/// A file descriptor of loaded program `id`, to run it many times (from several threads).
pub fn program_fd(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| std::io::Error::other(format!("program {id} not loaded")))?;
    let fd = info.fd().map_err(std::io::Error::other)?;
    fd.as_fd().try_clone_to_owned()
}

/// Runs the program behind `fd` once on `frame`, on the calling CPU; returns its return
/// value (the XDP action).
pub fn run_fd(fd: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> std::io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid test-run attribute block whose pointers outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.retval)
}

/// The id of the program a pinned link runs now.
pub fn link_program_id(pin: &std::path::Path) -> std::io::Result<u32> {
    let link = aya::programs::links::PinnedLink::from_pin(pin).map_err(std::io::Error::other)?;
    let fd: aya::programs::links::FdLink = link.into();
    Ok(fd.info().map_err(std::io::Error::other)?.program_id())
}
