# xdp/: the eBPF programs are Rust built for bpfel-unknown-none by
# xdp/loader/build.rs with the installed nightly toolchain (build-std needs
# its rust-src) and linked by bpf-linker 0.10.4 (its default rust-llvm
# feature uses nightly's LLVM; newer bpf-linker releases do not build here).
# No new toolchain is downloaded: nightly must already be installed.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  log "xdp: no nightly toolchain installed; the eBPF programs cannot be built"
  return 1
fi
rustup component list --installed --toolchain nightly 2>/dev/null | grep -q '^rust-src' \
  || { log "xdp: adding rust-src to nightly"; rustup component add rust-src --toolchain nightly; }
if ! bpf-linker --version 2>/dev/null | grep -q '0\.10\.4'; then
  log "xdp: installing bpf-linker 0.10.4 (a few minutes)"
  cargo install --locked bpf-linker@0.10.4
fi
