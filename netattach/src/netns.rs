//! Running code inside a network namespace.
//!
//! A network namespace belongs to a thread. [`run_in`] enters the namespace on
//! a dedicated OS thread (never a tokio worker) and [`Guard`] switches back to
//! the original namespace when dropped.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open netns {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enter netns {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("netns thread for {path} panicked")]
    Panicked { path: PathBuf },
    #[error("spawn netns thread")]
    Spawn(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// While alive, the current thread is in another network namespace; dropping
/// it returns the thread to the namespace it was in before.
#[derive(Debug)]
pub struct Guard {
    original: File,
}

impl Guard {
    /// Moves the calling thread into the namespace at `path`.
    pub fn enter(path: &Path) -> Result<Self> {
        let original = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Open {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        let target = File::open(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { original })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Going back to the namespace we came from cannot fail for a root
        // process that could leave it; if it does, the thread is left where it
        // is and the error is only logged by the caller's tracing.
        let _ = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Runs `f` on a new OS thread inside the network namespace at `path` and
/// returns its value.
pub fn run_in<F, T>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let owned = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T> {
            let _guard = Guard::enter(&owned)?;
            Ok(f())
        })
        .map_err(Error::Spawn)?;
    handle.join().map_err(|_| Error::Panicked {
        path: path.to_path_buf(),
    })?
}

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Creates a named network namespace the way `ip netns add` does: a new
/// namespace bind-mounted on `/var/run/netns/NAME`. Returns its path.
pub fn create(name: &str) -> Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    let dir = PathBuf::from(NETNS_RUN_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Open {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
    let target = path.clone();
    let made = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<()> {
            // This thread moves into the new namespace and then ends; the
            // bind mount keeps the namespace alive.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|source| Error::Enter {
                path: target.clone(),
                source,
            })?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| Error::Enter {
                path: target.clone(),
                source,
            })
        })
        .map_err(Error::Spawn)?
        .join()
        .map_err(|_| Error::Panicked { path: path.clone() })?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a named namespace; one that is already gone is fine.
pub fn delete(name: &str) -> Result<()> {
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Open { path, source }),
    }
}
