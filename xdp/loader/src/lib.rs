//! virtlink's eBPF datapath: loads the programs built from `xdp/ebpf`,
//! attaches them with tcx, pins their links and maps per pod on bpffs and
//! detaches them again.
//!
//! - [`nat`]: the masquerade binding's NAT (and anti-spoofing) per pod;
//! - [`vlan`]: 802.1Q push/pop on an interface;
//! - [`redirect`]: an untranslated `bpf_redirect_peer` path (benchmark ceiling);
//! - [`isolation`]: isolated tenant networks, per node (docs/vnet.md);
//! - [`bpffs`]: mounting bpffs and pin directories.
//!
//! Every function that names an interface works in the calling thread's
//! network namespace: call it on a thread inside the pod's namespace
//! (`netattach::netns::run_in`).

pub mod bpffs;
pub mod isolation;
pub mod nat;
pub mod redirect;
pub mod vlan;

use std::path::PathBuf;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};

pub use virtlink_xdp_common as common;

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/virtlink-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {0} is not in the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is not in the eBPF object")]
    MissingMap(&'static str),
    #[error("load program {name} into the kernel")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attach {name} to {iface} {direction}")]
    Attach {
        name: &'static str,
        iface: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<LinkError>,
    },
    #[error("pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("map {name}: {step}")]
    Map {
        name: &'static str,
        step: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount bpffs at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is not on a bpffs")]
    NotBpffs { path: PathBuf },
    #[error("interface {name} not found")]
    NoInterface {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Error::Map` for `name` at `step`.
pub(crate) fn map_err(
    name: &'static str,
    step: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map {
        name,
        step,
        source: Box::new(source),
    }
}

/// Loads the object; with `pin_dir`, the NAT maps are created pinned there,
/// or reused when already pinned there.
fn load(pin_dir: Option<&std::path::Path>) -> Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in common::NAT_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader.load(OBJECT).map_err(|e| Error::Load(Box::new(e)))
}

/// The loaded program `name`, as a TC classifier in the kernel.
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program {
            name,
            source: Box::new(source),
        })?;
    prog.load().map_err(|source| Error::Program {
        name,
        source: Box::new(source),
    })?;
    Ok(prog)
}

fn direction(t: TcAttachType) -> &'static str {
    match t {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
        TcAttachType::Custom(_) => "custom",
    }
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|source| Error::NoInterface {
        name: name.to_string(),
        source,
    })
}

/// Attaches `prog` with tcx at `iface`/`attach`. With `pin`, a link already
/// pinned there gets the new program atomically (`bpf_link_update`: no
/// packet sees no program), otherwise the new link is pinned there.
fn attach(
    prog: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    attach: TcAttachType,
    pin: Option<&std::path::Path>,
) -> Result<()> {
    let attach_err = |source| Error::Attach {
        name,
        iface: iface.to_string(),
        direction: direction(attach),
        source: Box::new(source),
    };
    if let Some(path) = pin {
        match PinnedLink::from_pin(path) {
            Ok(old) => {
                let fd: FdLink = old.into();
                let link = SchedClassifierLink::try_from(fd).map_err(|source| Error::Link {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?;
                prog.attach_to_link(link).map_err(attach_err)?;
                tracing::info!(program = name, iface, link = %path.display(), "replaced the program of a pinned link");
                return Ok(());
            }
            Err(LinkError::SyscallError(e))
                if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Link {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            attach,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_err)?;
    if let Some(path) = pin {
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd: FdLink = link.try_into().map_err(|source| Error::Link {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        fd.pin(path).map_err(|source| Error::Pin {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    }
    tracing::info!(
        program = name,
        iface,
        direction = direction(attach),
        "attached"
    );
    Ok(())
}

/// Ids of the programs attached with tcx to `iface` (ingress, then egress),
/// in the calling thread's namespace.
pub fn tcx_programs(iface: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for at in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, at).map_err(|source| Error::Attach {
            name: "(query)",
            iface: iface.to_string(),
            direction: direction(at),
            source: Box::new(source),
        })?;
        ids.extend(progs.iter().map(|p| p.id()));
    }
    Ok(ids)
}

/// `SIOCETHTOOL` and `ETHTOOL_GDRVINFO` from linux/sockios.h and ethtool.h.
const SIOCETHTOOL: nix::libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 3;

/// `struct ifreq` with the `ifr_data` member of its union.
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut u8,
    _rest: [u8; 16],
}

/// The driver of `iface` (`veth`, `tun`, ...) in the calling thread's
/// namespace, from `ETHTOOL_GDRVINFO`.
pub fn driver(iface: &str) -> Result<String> {
    use std::os::fd::AsRawFd;
    let io = |source| Error::Io {
        step: "read the driver of",
        path: PathBuf::from(iface),
        source,
    };
    if iface.len() >= 16 {
        return Err(Error::Config(format!("interface name {iface} too long")));
    }
    // Any AF_INET socket in this namespace serves for the ioctl.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(io)?;
    // struct ethtool_drvinfo: cmd, then driver[32], version[32], ... (196 bytes).
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    let mut req = IfreqData {
        name: [0; 16],
        data: info.as_mut_ptr(),
        _rest: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and writes at most
    // size_of(ethtool_drvinfo) = 196 bytes through `data`, which points to
    // `info`; both outlive the call.
    let ret = unsafe { nix::libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if ret < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    let driver = &info[4..36];
    let end = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Ok(String::from_utf8_lossy(&driver[..end]).into_owned())
}

/// The MAC of `iface` in the calling thread's namespace.
pub fn mac(iface: &str) -> Result<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| Error::NoInterface {
        name: iface.to_string(),
        source,
    })?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(mac) = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(mac);
        }
    }
    Err(Error::NoInterface {
        name: iface.to_string(),
        source: nix::Error::ENODEV,
    })
}
