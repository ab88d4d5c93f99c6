//! Tap devices through `/dev/net/tun` ioctls: creating a persistent tap for
//! the guest (QEMU attaches to it later by name) and attaching to one.
//! Both act in the calling thread's network namespace.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open /dev/net/tun for tap {name}")]
    Open {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} tap {name}")]
    Ioctl {
        step: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
}

pub type Result<T> = std::result::Result<T, Error>;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` with the `ifr_flags` member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
    IfReq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<nix::libc::c_int>())
);
nix::ioctl_write_int_bad!(
    tunsetowner,
    nix::request_code_write!(b'T', 204, std::mem::size_of::<nix::libc::c_int>())
);

fn ifreq(name: &str) -> Result<IfReq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 {
        return Err(Error::BadName(name.to_string()));
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    Ok(req)
}

/// Opens `/dev/net/tun` and attaches to (or creates) the tap `name`
/// (`IFF_TAP | IFF_NO_PI`). The returned file reads and writes whole
/// Ethernet frames: it is the guest's side of the tap.
pub fn attach(name: &str) -> Result<File> {
    let req = ifreq(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| Error::Open {
            name: name.to_string(),
            source,
        })?;
    // SAFETY: the fd is an open /dev/net/tun; `req` is a properly sized and
    // initialised `struct ifreq` that outlives the call.
    unsafe { tunsetiff(file.as_raw_fd(), &req) }.map_err(|source| Error::Ioctl {
        step: "attach to",
        name: name.to_string(),
        source,
    })?;
    Ok(file)
}

/// Creates the persistent tap `name` in the calling thread's namespace (a
/// tap that already exists is reused), owned by `owner` when given (the uid
/// QEMU runs as). The tap stays after this returns, without carrier until
/// the hypervisor attaches.
pub fn create_persistent(name: &str, owner: Option<u32>) -> Result<()> {
    let file = attach(name)?;
    if let Some(uid) = owner {
        // SAFETY: the fd is attached to a tap; TUNSETOWNER takes the uid by value.
        unsafe { tunsetowner(file.as_raw_fd(), uid as nix::libc::c_int) }.map_err(|source| {
            Error::Ioctl {
                step: "set owner of",
                name: name.to_string(),
                source,
            }
        })?;
    }
    // SAFETY: the fd is attached to a tap; TUNSETPERSIST takes 1 by value.
    unsafe { tunsetpersist(file.as_raw_fd(), 1) }.map_err(|source| Error::Ioctl {
        step: "make persistent",
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_layout_and_names() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let r = ifreq("tap0").unwrap();
        assert_eq!(&r.name[..5], b"tap0\0");
        assert!(ifreq("").is_err());
        assert!(ifreq("0123456789abcdef").is_err());
        assert!(ifreq("0123456789abcde").is_ok());
    }
}
