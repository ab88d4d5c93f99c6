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

/// True when `path` names an existing network namespace file.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
