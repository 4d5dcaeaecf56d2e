//! Builds the XDP program (crate `jitgate-ebpf`) for the BPF target with aya-build, as aya's
//! own template does. The object lands in OUT_DIR and is embedded in the agent.
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
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
