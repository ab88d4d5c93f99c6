//! Booting a guest under QEMU (TCG) and driving its serial console.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use crate::guest::{self, GuestImage, READY_MARKER};
use crate::spawn::spawn_tied;

/// Keep each VM's directory (serial socket, `serial.log`, `qemu.log`) after
/// the VM is gone when this environment variable is set (to anything).
pub const KEEP_ENV: &str = "VIRTLINK_VM_KEEP";

/// How long `Drop` waits for the guest to power off before killing QEMU.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("prepare the guest image")]
    Guest(#[from] guest::Error),
    #[error("make the VM directory")]
    Dir(#[source] std::io::Error),
    #[error("open netns {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {qemu}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu of VM {vm} exited at start ({status}): {log}")]
    Exited {
        vm: String,
        status: ExitStatus,
        log: String,
    },
    #[error("connect to the serial console of VM {vm} at {path}")]
    Connect {
        vm: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write to the serial console of VM {vm}")]
    Write {
        vm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {vm}: no {what} after {waited:?}; console ends with:\n{tail}")]
    Timeout {
        vm: String,
        what: String,
        waited: Duration,
        tail: String,
    },
    #[error("VM {vm}: console closed while waiting for {what}; it ends with:\n{tail}")]
    Closed {
        vm: String,
        what: String,
        tail: String,
    },
    #[error("VM {vm}: `{command}` exited with {status}; output:\n{output}")]
    Failed {
        vm: String,
        command: String,
        status: i32,
        output: String,
    },
    #[error("stop qemu of VM {vm}")]
    Stop {
        vm: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A virtio-net NIC backed by an existing tap in the VM's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Tap interface name (QEMU's `ifname=`).
    pub tap: String,
    /// Guest MAC, `52:54:00:..` style.
    pub mac: String,
}

impl Nic {
    pub fn tap(tap: impl Into<String>, mac: impl Into<String>) -> Self {
        Self {
            tap: tap.into(),
            mac: mac.into(),
        }
    }
}

/// A locally administered MAC (`52:54:00:xx:xx:xx`, QEMU's prefix) from `n`.
pub fn mac_from(n: u32) -> String {
    let [_, a, b, c] = n.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

/// What to boot. Build with [`VmSpec::new`] and the chained setters.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Name in errors and logs.
    pub name: String,
    /// Network namespace QEMU runs in (`/var/run/netns/NAME`,
    /// `/proc/PID/ns/net`, ...); `None` keeps the caller's.
    pub netns: Option<PathBuf>,
    /// Tap NICs, in guest order (`eth0`, `eth1`, ...).
    pub nics: Vec<Nic>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Extra kernel command line words (`virtlink.ip=eth0:10.0.0.2/24`, ...).
    pub cmdline: Vec<String>,
    /// Extra QEMU arguments, passed verbatim after the NICs (for example a
    /// binder's own `-netdev`/`-device` pairs).
    pub qemu_args: Vec<String>,
    /// Guest to boot; `None` means [`GuestImage::ensure`].
    pub guest: Option<GuestImage>,
    /// QEMU binary.
    pub qemu: PathBuf,
}

impl Default for VmSpec {
    fn default() -> Self {
        Self {
            name: "vm".into(),
            netns: None,
            nics: Vec::new(),
            memory_mib: 256,
            cmdline: Vec::new(),
            qemu_args: Vec::new(),
            guest: None,
            qemu: "qemu-system-x86_64".into(),
        }
    }
}

impl VmSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Adds a virtio-net NIC on the existing tap `tap`.
    pub fn tap(mut self, tap: impl Into<String>, mac: impl Into<String>) -> Self {
        self.nics.push(Nic::tap(tap, mac));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Appends one word to the kernel command line.
    pub fn cmdline(mut self, word: impl Into<String>) -> Self {
        self.cmdline.push(word.into());
        self
    }

    /// Appends raw QEMU arguments.
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn guest(mut self, guest: GuestImage) -> Self {
        self.guest = Some(guest);
        self
    }

    /// The QEMU arguments for this spec (without the binary).
    pub fn args(&self, guest: &GuestImage, serial_sock: &Path) -> Vec<String> {
        let mut append = vec!["console=ttyS0".to_owned(), "panic=-1".to_owned()];
        append.extend(self.cmdline.iter().cloned());
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend([
            "-m".to_owned(),
            self.memory_mib.to_string(),
            // wait=on: QEMU starts the guest only once the harness is
            // connected, so the console stream is complete from the first
            // byte. No `logfile=`: QEMU logs a character twice when it has to
            // retry a write to a slow reader; the harness writes the log.
            "-chardev".to_owned(),
            format!(
                "socket,id=serial0,path={},server=on,wait=on",
                serial_sock.display()
            ),
            "-serial".to_owned(),
            "chardev:serial0".to_owned(),
            "-kernel".to_owned(),
            guest.kernel.display().to_string(),
            "-initrd".to_owned(),
            guest.initrd.display().to_string(),
            "-append".to_owned(),
            append.join(" "),
        ]);
        for (i, nic) in self.nics.iter().enumerate() {
            args.push("-netdev".into());
            args.push(format!(
                "tap,id=net{i},ifname={},script=no,downscript=no",
                nic.tap
            ));
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac));
        }
        args.extend(self.qemu_args.iter().cloned());
        args
    }
}

/// Output and exit status of a command run in the guest shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// stdout and stderr interleaved, as the console showed them, `\r` removed.
    pub output: String,
    pub status: i32,
}

#[derive(Debug, Default)]
struct Console {
    data: Vec<u8>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    console: Mutex<Console>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Shell {
    ready: bool,
    /// A command may still run in the foreground (a timeout whose Ctrl-C
    /// was not confirmed).
    busy: bool,
    seq: u64,
    /// Console bytes before this offset belong to finished commands.
    consumed: usize,
}

/// A running guest. Dropping it powers the guest off (killing QEMU if it
/// does not stop within [`POWEROFF_TIMEOUT`]) and reaps QEMU.
#[derive(Debug)]
pub struct Vm {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
    dir: Option<tempfile::TempDir>,
    console: UnixStream,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    shell: Mutex<Shell>,
}

impl Vm {
    /// Starts QEMU for `spec` and connects to its serial console; returns
    /// while the guest boots (see [`Vm::wait_ready`]).
    pub fn boot(spec: VmSpec) -> Result<Self> {
        let guest = match &spec.guest {
            Some(g) => g.clone(),
            None => GuestImage::ensure()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("virtlink-vm-")
            .tempdir()
            .map_err(Error::Dir)?;
        let sock = dir.path().join("serial.sock");
        let serial_log = File::create(dir.path().join("serial.log")).map_err(Error::Dir)?;
        let qemu_log = dir.path().join("qemu.log");
        let log = File::create(&qemu_log).map_err(Error::Dir)?;
        let log2 = log.try_clone().map_err(Error::Dir)?;

        let mut cmd = Command::new(&spec.qemu);
        cmd.args(spec.args(&guest, &sock))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(path) = &spec.netns {
            let ns = File::open(path).map_err(|source| Error::Netns {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the hook runs between fork and exec and only makes the
            // setns system call (async-signal-safe) on a descriptor the
            // closure owns; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        let mut child = spawn_tied(cmd).map_err(|source| Error::Spawn {
            qemu: spec.qemu.clone(),
            source,
        })?;

        let shared = Arc::new(Shared::default());
        let attached = attach_console(&mut child, &sock, serial_log, &shared, &spec.name);
        let (console, reader) = match attached {
            Ok(attached) => attached,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                return Err(match e {
                    ConnectError::Exited(status) => Error::Exited {
                        vm: spec.name,
                        status,
                        log: log.trim().to_owned(),
                    },
                    ConnectError::Io(source) => Error::Connect {
                        vm: spec.name,
                        path: sock,
                        source,
                    },
                });
            }
        };

        let mut dir = Some(dir);
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(d) = dir.as_mut() {
                d.disable_cleanup(true);
                eprintln!("vm-tests: VM {} keeps {}", spec.name, d.path().display());
            }
        }
        Ok(Self {
            name: spec.name,
            child,
            exited: None,
            dir,
            console,
            shared,
            reader: Some(reader),
            shell: Mutex::new(Shell::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding everything the console printed (kept after the VM
    /// when `VIRTLINK_VM_KEEP` is set).
    pub fn serial_log(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("serial.log"))
    }

    /// Everything the console printed so far (lossy UTF-8, `\r` removed).
    pub fn console_output(&self) -> String {
        clean(&self.lock_console().data)
    }

    /// Waits until the console has shown `needle` anywhere since boot.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<()> {
        let pattern = needle.as_bytes();
        self.wait_console(&format!("`{needle}` on the console"), timeout, |c| {
            find(&c.data, pattern, 0).map(|_| ())
        })
    }

    /// Waits for the guest's ready line, then prepares the shell for
    /// [`Vm::run`] (no echo, no prompt). Cheap once the guest is ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let mut shell = self.lock_shell();
        self.ready(&mut shell, timeout)
    }

    /// Runs `command` (any shell text; stdin is the console, so redirect it
    /// from /dev/null for programs that read it) in the guest's root shell
    /// and returns its output and exit status. Waits for the guest to be
    /// ready first. On timeout the command gets a Ctrl-C.
    pub fn run(&self, command: &str, timeout: Duration) -> Result<RunOutput> {
        let start = Instant::now();
        let mut shell = self.lock_shell();
        self.ready(&mut shell, timeout)?;
        let left = timeout.saturating_sub(start.elapsed());
        self.run_locked(&mut shell, command, left)
    }

    /// [`Vm::run`], but a non-zero exit status is an error; returns the output.
    pub fn run_ok(&self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.status != 0 {
            return Err(Error::Failed {
                vm: self.name.clone(),
                command: command.to_owned(),
                status: out.status,
                output: out.output,
            });
        }
        Ok(out.output)
    }

    /// Powers the guest off and waits for QEMU to exit (killing it after
    /// `timeout`). Returns QEMU's exit status.
    pub fn shutdown(mut self, timeout: Duration) -> Result<ExitStatus> {
        self.stop(timeout)
    }

    fn ready(&self, shell: &mut Shell, timeout: Duration) -> Result<()> {
        if shell.ready {
            return Ok(());
        }
        let start = Instant::now();
        self.wait_for(READY_MARKER, timeout)?;
        // Input typed before the shell starts waits in the tty: no race.
        // Without echo, busybox ash also skips its line editor, so the
        // console shows only what commands print.
        let left = timeout.saturating_sub(start.elapsed());
        self.run_locked(shell, "stty -echo; PS1=''; PS2=''", left)?;
        shell.ready = true;
        Ok(())
    }

    fn run_locked(&self, shell: &mut Shell, command: &str, timeout: Duration) -> Result<RunOutput> {
        shell.seq += 1;
        let n = shell.seq;
        // The quotes keep the markers out of the echo of the typed line
        // (before `stty -echo` takes effect): only the shell's output matches.
        let text = format!("echo @@VL-B-'{n}'@@\n{command}\necho @@VL-E-'{n}'-$?@@\n");
        self.write(text.as_bytes())?;
        let from = shell.consumed;
        let what = format!("the end of `{command}`");
        let result = self.wait_console(&what, timeout, |c| parse_framed(&c.data, n, from));
        match result {
            Ok((out, consumed)) => {
                shell.consumed = consumed;
                Ok(out)
            }
            Err(e) => {
                if matches!(e, Error::Timeout { .. }) {
                    shell.busy = true;
                    self.interrupt(shell);
                }
                Err(e)
            }
        }
    }

    /// Sends Ctrl-C and waits until the shell answers again. ash drops input
    /// that arrives while it handles SIGINT, so each probe is a fresh command
    /// and lost ones do not matter.
    fn interrupt(&self, shell: &mut Shell) {
        if self.write(b"\x03").is_err() {
            return;
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            // Not run_locked's timeout path again: no recursion.
            if self
                .run_probe(shell, Duration::from_secs(2))
                .is_some_and(|out| out.status == 0)
            {
                shell.busy = false;
                return;
            }
        }
    }

    fn run_probe(&self, shell: &mut Shell, timeout: Duration) -> Option<RunOutput> {
        shell.seq += 1;
        let n = shell.seq;
        self.write(format!("echo @@VL-B-'{n}'@@\ntrue\necho @@VL-E-'{n}'-$?@@\n").as_bytes())
            .ok()?;
        let (out, consumed) = self
            .wait_console("shell after Ctrl-C", timeout, |c| {
                parse_framed(&c.data, n, shell.consumed)
            })
            .ok()?;
        shell.consumed = consumed;
        Some(out)
    }

    fn write(&self, bytes: &[u8]) -> Result<()> {
        (&self.console)
            .write_all(bytes)
            .map_err(|source| Error::Write {
                vm: self.name.clone(),
                source,
            })
    }

    fn lock_console(&self) -> MutexGuard<'_, Console> {
        self.shared
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_shell(&self) -> MutexGuard<'_, Shell> {
        self.shell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `check` finds something in the console output.
    fn wait_console<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Console) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut console = self.lock_console();
        loop {
            if let Some(found) = check(&console) {
                return Ok(found);
            }
            if console.closed {
                return Err(Error::Closed {
                    vm: self.name.clone(),
                    what: what.to_owned(),
                    tail: tail(&console.data),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    vm: self.name.clone(),
                    what: what.to_owned(),
                    waited: timeout,
                    tail: tail(&console.data),
                });
            }
            console = self
                .shared
                .changed
                .wait_timeout(console, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let stop_err = |source| Error::Stop {
            vm: self.name.clone(),
            source,
        };
        let booted = self.lock_shell().ready;
        if booted && self.child.try_wait().map_err(stop_err)?.is_none() {
            {
                let mut shell = self.shell.lock().unwrap_or_else(|e| e.into_inner());
                if shell.busy {
                    self.interrupt(&mut shell);
                }
            }
            let deadline = Instant::now() + timeout;
            // Typed twice at most: a line can be lost if the shell was busy.
            let mut next_try = Instant::now();
            while Instant::now() < deadline {
                if Instant::now() >= next_try {
                    let _ = self.write(b"poweroff -f\n");
                    next_try = Instant::now() + timeout / 2;
                }
                if let Some(status) = self.child.try_wait().map_err(stop_err)? {
                    return self.finish(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "vm-tests: VM {} did not power off within {timeout:?}: killing qemu",
                self.name
            );
        }
        if let Some(status) = self.child.try_wait().map_err(stop_err)? {
            return self.finish(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait().map_err(stop_err)?;
        self.finish(status)
    }

    fn finish(&mut self, status: ExitStatus) -> Result<ExitStatus> {
        self.exited = Some(status);
        let _ = self.console.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "vm-tests: console of VM {} ends with:\n{}",
                self.name,
                tail(&self.lock_console().data)
            );
        }
        if let Err(e) = self.stop(POWEROFF_TIMEOUT) {
            eprintln!("vm-tests: {e}");
        }
        // Removes the directory unless KEEP_ENV asked to keep it.
        drop(self.dir.take());
    }
}

enum ConnectError {
    Exited(ExitStatus),
    Io(std::io::Error),
}

/// Connects to the console and starts the thread that reads it into `shared`
/// and `log`.
fn attach_console(
    child: &mut Child,
    sock: &Path,
    log: File,
    shared: &Arc<Shared>,
    name: &str,
) -> std::result::Result<(UnixStream, JoinHandle<()>), ConnectError> {
    let console = connect(child, sock)?;
    let mut stream = console.try_clone().map_err(ConnectError::Io)?;
    let shared = shared.clone();
    let reader = std::thread::Builder::new()
        .name(format!("console-{name}"))
        .spawn(move || read_console(&mut stream, log, &shared))
        .map_err(ConnectError::Io)?;
    Ok((console, reader))
}

/// Connects to QEMU's console socket once QEMU has made it.
fn connect(child: &mut Child, sock: &Path) -> std::result::Result<UnixStream, ConnectError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().map_err(ConnectError::Io)? {
            return Err(ConnectError::Exited(status));
        }
        match UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(ConnectError::Io(e)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn read_console(stream: &mut UnixStream, mut log: File, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        // The log is for people reading it after a failure: best effort.
        let _ = log.write_all(&buf[..n]);
        let mut console = shared.console.lock().unwrap_or_else(|e| e.into_inner());
        if n == 0 {
            console.closed = true;
        } else {
            console.data.extend_from_slice(&buf[..n]);
        }
        shared.changed.notify_all();
        if n == 0 {
            return;
        }
    }
}

/// Finds command `n`'s output framed by its begin and end markers at or after
/// `from`; returns it with the offset just past the end marker.
fn parse_framed(data: &[u8], n: u64, from: usize) -> Option<(RunOutput, usize)> {
    let begin = format!("@@VL-B-{n}@@");
    let end = format!("@@VL-E-{n}-");
    let b = find(data, begin.as_bytes(), from)? + begin.len();
    let e = find(data, end.as_bytes(), b)?;
    let digits_at = e + end.len();
    let close = find(data, b"@@", digits_at)?;
    let status = std::str::from_utf8(data.get(digits_at..close)?)
        .ok()?
        .parse()
        .ok()?;
    let output = clean(data.get(b..e)?);
    let output = output.strip_prefix('\n').unwrap_or(&output).to_owned();
    Some((RunOutput { output, status }, close + 2))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

/// The last 2 KiB of console output, for error messages.
fn tail(data: &[u8]) -> String {
    let start = data.len().saturating_sub(2048);
    clean(&data[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_and_distinct() {
        assert_eq!(mac_from(1), "52:54:00:00:00:01");
        assert_eq!(mac_from(0x01_0203), "52:54:00:01:02:03");
    }

    #[test]
    fn find_respects_offset() {
        assert_eq!(find(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find(b"abc", b"bc", 9), None);
    }

    #[test]
    fn framed_output_skips_echo_and_older_commands() {
        let console = b"echo @@VL-B-'3'@@\r\nstale\r\n@@VL-B-3@@\r\nold\r\n@@VL-E-3-0@@\r\n\
            echo @@VL-B-'4'@@\r\n@@VL-B-4@@\r\nline 1\r\nline 2\r\n@@VL-E-4-17@@\r\n";
        let (out, end) = parse_framed(console, 4, 0).unwrap();
        assert_eq!(out.output, "line 1\nline 2\n");
        assert_eq!(out.status, 17);
        assert_eq!(&console[end..], b"\r\n");
        assert!(parse_framed(console, 4, end).is_none());
        assert!(parse_framed(b"@@VL-B-5@@\r\npartial", 5, 0).is_none());
    }

    #[test]
    fn args_carry_nics_cmdline_and_raw_args() {
        let guest = GuestImage {
            dir: "/g".into(),
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.img".into(),
        };
        let spec = VmSpec::new("t")
            .tap("tap0", mac_from(2))
            .cmdline("virtlink.dhcp=1")
            .memory_mib(128)
            .qemu_args(["-netdev", "user,id=x"]);
        let args = spec.args(&guest, Path::new("/d/s.sock"));
        let joined = args.join(" ");
        assert!(joined.contains("-m 128"));
        assert!(joined.contains("console=ttyS0 panic=-1 virtlink.dhcp=1"));
        assert!(joined
            .contains("-netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:02"));
        assert!(joined.ends_with("-netdev user,id=x"));
        assert!(!joined.contains("vhost"));
    }
}
