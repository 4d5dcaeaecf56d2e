//! Builds the XDP program (crate `jitgate-ebpf`) for the BPF target with aya-build, as aya's
//! own template does, in a directory shared by every build of the agent in one profile; the
//! object is copied into OUT_DIR and embedded in the agent.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The fuzz targets (fuzz/, built with `--cfg fuzzing`) exercise the parsers and never
    // load the program: an empty object spares that build a BPF compile.
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        std::fs::write(std::path::Path::new(&out).join("jitgate"), b"")
            .context("writing the empty program object")?;
        return Ok(());
    }
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "jitgate-ebpf")
        .ok_or_else(|| anyhow!("jitgate-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("manifest has no parent"))?;
    // aya-build compiles under OUT_DIR, which differs for every build-script run (clippy,
    // `cargo build`, `cargo test` each have one): the program was compiled from scratch
    // three times per CI run, a minute each. It builds in one directory beside the
    // profiles instead, where a second run finds everything fresh, and the object is then
    // copied into this run's OUT_DIR.
    let out = std::path::PathBuf::from(
        std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?,
    );
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: one directory per profile, so
    // that the parent cargo's lock on the profile covers it (clippy, build and test share
    // the dev profile).
    let shared = out
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected OUT_DIR {}", out.display()))?
        .join("jitgate-ebpf");
    std::fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Only what this run builds is copied (with AYA_BUILD_SKIP nothing is, as before).
    let _ = std::fs::remove_file(shared.join("jitgate"));
    // SAFETY: a build script is one thread; nothing reads the environment concurrently.
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    );
    // SAFETY: as above.
    unsafe { std::env::set_var("OUT_DIR", &out) };
    built?;
    std::fs::copy(shared.join("jitgate"), out.join("jitgate"))
        .context("copying the program object into OUT_DIR")?;
    Ok(())
}
