//! Builds the eBPF programs (`xdp/ebpf`) for `bpfel-unknown-none` with the
//! nightly toolchain and bpf-linker (see scripts/setup.d/xdp.sh); the object
//! lands in OUT_DIR and is embedded by `src/lib.rs`.

use std::path::Path;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let xdp = Path::new(&manifest)
        .parent()
        .context("xdp/loader has a parent")?;
    let ebpf = xdp.join("ebpf");
    let common = xdp.join("common");
    println!("cargo:rerun-if-changed={}", common.display());
    let root = ebpf.to_str().context("xdp/ebpf path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "virtlink-xdp-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "build the eBPF programs (needs nightly with rust-src and bpf-linker: scripts/setup.sh)",
    )
}
