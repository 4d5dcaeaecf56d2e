//! A fleet lab: one "workstation" namespace (which also hosts the controller) with a bridge,
//! and any number of "vm" namespaces plugged into it, each with its own agent. Plus a real
//! sshd. Everything is removed on drop.

use crate::netns::{ip, ips};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workstation's address on the bridge (controller API and agent endpoint live here).
pub const WS_V4: &str = "198.51.100.1";
pub const WS_V6: &str = "2001:db8:1::1";

pub struct FleetVm {
    pub ns: String,
    /// The VM's interface towards the bridge (where the program attaches).
    pub iface: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

pub struct Fleet {
    pub ws: String,
    pub vms: Vec<FleetVm>,
}

fn no_dad(ns: &str) -> io::Result<()> {
    for key in [
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ] {
        let st = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", key])
            .status()?;
        if !st.success() {
            return Err(io::Error::other(format!("sysctl {key} in {ns}")));
        }
    }
    Ok(())
}

impl Fleet {
    pub fn new(vms: usize) -> io::Result<Fleet> {
        let tag = crate::unique("");
        let mut f = Fleet {
            ws: format!("jgws{tag}"),
            vms: Vec::new(),
        };
        ip(&["netns", "add", &f.ws])?;
        no_dad(&f.ws)?;
        let ws = f.ws.clone();
        ips(&format!("-n {ws} link set lo up"))?;
        ips(&format!("-n {ws} link add br0 type bridge"))?;
        ips(&format!("-n {ws} addr add {WS_V4}/24 dev br0"))?;
        ips(&format!("-n {ws} addr add {WS_V6}/64 dev br0 nodad"))?;
        ips(&format!("-n {ws} link set br0 up"))?;
        for i in 0..vms {
            f.add_vm(i)?;
        }
        Ok(f)
    }

    /// Plugs another VM into the bridge: 198.51.100.(10+i), 2001:db8:1::(10+i).
    pub fn add_vm(&mut self, i: usize) -> io::Result<()> {
        let ns = format!("jgv{i}{}", crate::unique(""));
        ip(&["netns", "add", &ns])?;
        self.vms.push(FleetVm {
            ns: ns.clone(),
            iface: "eth0".into(),
            v4: format!("198.51.100.{}", 10 + i)
                .parse()
                .map_err(io::Error::other)?,
            v6: format!("2001:db8:1::{:x}", 0x10 + i)
                .parse()
                .map_err(io::Error::other)?,
        });
        no_dad(&ns)?;
        let ws = &self.ws;
        let (v4, v6) = (self.vms[i].v4, self.vms[i].v6);
        let port = format!("p{i}");
        ips(&format!("-n {ns} link set lo up"))?;
        ips(&format!(
            "-n {ns} link add eth0 type veth peer name {port} netns {ws}"
        ))?;
        ips(&format!("-n {ns} addr add {v4}/24 dev eth0"))?;
        ips(&format!("-n {ns} addr add {v6}/64 dev eth0 nodad"))?;
        ips(&format!("-n {ns} link set eth0 up"))?;
        ips(&format!("-n {ws} link set {port} master br0"))?;
        ips(&format!("-n {ws} link set {port} up"))?;
        Ok(())
    }

    pub fn ns_path(ns: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(ns)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for v in &self.vms {
            let _ = ip(&["netns", "del", &v.ns]);
        }
        let _ = ip(&["netns", "del", &self.ws]);
    }
}

/// A real OpenSSH server in a namespace, accepting one generated key for root.
pub struct Sshd {
    child: Child,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

fn keygen(path: &Path) -> io::Result<()> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other("ssh-keygen failed"))
    }
}

impl Sshd {
    pub fn start(ns: &str) -> io::Result<Sshd> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        keygen(&d.join("host"))?;
        keygen(&d.join("client"))?;
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys"))?;
        // sshd's privilege-separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let config = format!(
            "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\nHostKey {h}\nPidFile {p}\n\
             AuthorizedKeysFile {a}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n",
            h = d.join("host").display(),
            p = d.join("sshd.pid").display(),
            a = d.join("authorized_keys").display(),
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-Hltn", "sport = :22"])
                .output()?;
            if !out.stdout.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("sshd did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Sshd {
            child,
            key: d.join("client"),
            _dir: dir,
        })
    }

    /// Runs `cmd` over SSH from namespace `from` to `host`.
    pub fn ssh(
        &self,
        from: &str,
        host: IpAddr,
        cmd: &str,
        timeout_secs: u32,
    ) -> io::Result<Output> {
        self.command(from, host, cmd, timeout_secs).output()
    }

    /// A long-running SSH session (`cmd` on the VM) in the background.
    pub fn session(&self, from: &str, host: IpAddr, cmd: &str) -> io::Result<Child> {
        self.command(from, host, cmd, 5)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    fn command(&self, from: &str, host: IpAddr, cmd: &str, timeout_secs: u32) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", from, "ssh", "-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .args(["-o", &format!("ConnectTimeout={timeout_secs}")])
            .args([&format!("root@{host}"), cmd]);
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
