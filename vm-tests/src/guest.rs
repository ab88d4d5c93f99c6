//! The guest image: a Debian cloud kernel and a busybox initramfs.
//!
//! The recipe lives in `vm-tests/guest/` (`build-guest.sh`, the guest's
//! `init` and its `udhcpc.script`); the same script serves `scripts/setup.sh`
//! and [`GuestImage::ensure`], so there is one recipe and one cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Environment variable naming the guest directory, overriding the cache.
pub const GUEST_DIR_ENV: &str = "VIRTLINK_GUEST_DIR";

/// Line the guest prints on its console when `init` is done.
pub const READY_MARKER: &str = "VIRTLINK-GUEST-READY";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run {script}")]
    Spawn {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build the guest with {script} ({status}): {stderr}")]
    Build {
        script: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("guest directory {dir} lacks {file}")]
    Incomplete { dir: PathBuf, file: &'static str },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A built guest: paths to pass to QEMU's `-kernel` and `-initrd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Directory holding the files below and `recipe` (what went in).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

static ENSURED: Mutex<Option<GuestImage>> = Mutex::new(None);

impl GuestImage {
    /// The guest, built on first use and cached (see [`build_script`]); later
    /// calls in the same process return at once. Parallel callers, in this
    /// process or others, wait for one build (the script holds a file lock).
    pub fn ensure() -> Result<Self> {
        let mut cached = ENSURED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(image) = cached.as_ref() {
            return Ok(image.clone());
        }
        let image = Self::build(false)?;
        *cached = Some(image.clone());
        Ok(image)
    }

    /// Runs the build script; `force` rebuilds even when the cache is complete.
    pub fn build(force: bool) -> Result<Self> {
        let script = build_script();
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        if force {
            cmd.arg("--force");
        }
        let out = cmd.output().map_err(|source| Error::Spawn {
            script: script.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Build {
                script,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or_default().trim();
        Self::from_dir(Path::new(dir))
    }

    /// A guest already built in `dir` (`vmlinuz` and `initrd.img`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let image = Self {
            dir: dir.to_path_buf(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        };
        for (path, file) in [(&image.kernel, "vmlinuz"), (&image.initrd, "initrd.img")] {
            if !path.is_file() {
                return Err(Error::Incomplete {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        Ok(image)
    }
}

/// `vm-tests/guest/build-guest.sh` in this source tree. It prints the guest
/// directory: `$VIRTLINK_GUEST_DIR` when set, else
/// `/var/cache/virtlink/guest/<hash of the recipe>`.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build-guest.sh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_dir_needs_both_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            GuestImage::from_dir(dir.path()),
            Err(Error::Incomplete {
                file: "vmlinuz",
                ..
            })
        ));
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"i").unwrap();
        let image = GuestImage::from_dir(dir.path()).unwrap();
        assert_eq!(image.kernel, dir.path().join("vmlinuz"));
    }
}
