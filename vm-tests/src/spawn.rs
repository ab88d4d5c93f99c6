//! Starting processes that die with the test process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, and
//! test threads end early and often. Children are therefore forked by one
//! thread that lives as long as the process: if the test binary is killed
//! (a CI timeout), its VMs die with it instead of running on.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

type Job = (Command, Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Option<Sender<Job>>> = OnceLock::new();

fn spawner() -> Option<&'static Sender<Job>> {
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("vm-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Spawns `cmd` from the process-lifetime thread, with SIGKILL as its parent
/// death signal. Falls back to a plain spawn when that thread cannot start.
pub(crate) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec and only makes the prctl
    // system call, which is async-signal-safe; it touches no memory shared
    // with other threads.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(io::Error::from)
        });
    }
    let Some(tx) = spawner() else {
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = channel();
    if let Err(std::sync::mpsc::SendError((mut cmd, _))) = tx.send((cmd, reply_tx)) {
        return cmd.spawn();
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("vm-spawner thread is gone")))
}
