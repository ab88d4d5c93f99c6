//! The `virtlink-cni` binary: a one-line dispatch to [`virtlink_cni::plugin`].

fn main() {
    std::process::exit(virtlink_cni::plugin::main());
}
