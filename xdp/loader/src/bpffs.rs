//! bpffs: where pinned maps and links live.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: nix::libc::__fsword_t = 0xcafe_4a11;

/// The default root for virtlink's pins; each pod gets a directory below.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf";

/// Is `path` on a bpffs?
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `root` is a bpffs mount (mounting one when it is not).
pub fn ensure_mounted(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|source| Error::Io {
        step: "create bpffs mount point",
        path: root.to_path_buf(),
        source,
    })?;
    if is_bpffs(root) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        path: root.to_path_buf(),
        source,
    })?;
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}

/// `<root>/virtlink/<pod>`: a pod's pin directory.
pub fn pod_dir(root: &Path, pod: &str) -> PathBuf {
    let clean: String = pod
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join("virtlink").join(clean)
}

/// Creates `dir` (which must end up on a bpffs).
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        step: "create pin directory",
        path: dir.to_path_buf(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(Error::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Removes every pin in `dir` and the directory; a missing directory is fine.
pub fn remove_dir(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                step: "list pins in",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    // Links first, so programs stop before their maps go.
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for path in paths {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
        {
            detach_link(&path)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    step: "remove pin",
                    path,
                    source,
                })
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            step: "remove pin directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// `BPF_OBJ_GET` and `BPF_LINK_DETACH` from linux/bpf.h.
const BPF_OBJ_GET: nix::libc::c_long = 7;
const BPF_LINK_DETACH: nix::libc::c_long = 34;

/// Detaches the pinned link at `path` now (`BPF_LINK_DETACH`). Removing the
/// pin alone frees the link only later, from a kernel work item; this makes
/// the program stop before [`remove_dir`] returns. The pin stays until
/// removed (a detached link holds nothing).
pub fn detach_link(path: &Path) -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    let io = |step: &'static str, source: std::io::Error| Error::Io {
        step,
        path: path.to_path_buf(),
        source,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io("pinned link path", std::io::Error::other(e)))?;
    // union bpf_attr, zeroed past the fields each command reads.
    let mut attr = [0u64; 8];
    attr[0] = c_path.as_ptr() as u64;
    // SAFETY: BPF_OBJ_GET reads `pathname` (a NUL-terminated string that
    // outlives the call) from a zeroed bpf_attr of the size passed.
    let fd = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(());
        }
        return Err(io("open pinned link", e));
    }
    let raw = fd as std::os::fd::RawFd;
    // SAFETY: `raw` is a new descriptor the kernel just returned to us and
    // nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut attr = [0u64; 8];
    attr[0] = u64::from(raw as u32);
    // SAFETY: BPF_LINK_DETACH reads `link_fd` (the first u32) from a zeroed
    // bpf_attr; `link` keeps the descriptor open during the call.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    drop(link);
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        // ENOLINK: already detached (its interface went away).
        if e.raw_os_error() != Some(nix::libc::ENOLINK) {
            return Err(io("detach pinned link", e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dirs_are_one_component() {
        assert_eq!(
            pod_dir(Path::new("/sys/fs/bpf"), "ns/pod a"),
            PathBuf::from("/sys/fs/bpf/virtlink/ns_pod_a")
        );
    }
}
