//! A VM and its fixtures leave nothing behind: no qemu, no namespace, no link.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::ensure;
use common::{BOOT, CMD};
use vm_tests::{mac_from, netns, Netns, Vm, VmSpec};

fn process_gone(pid: u32) -> bool {
    // A zombie would still be listed: Vm reaps, so the entry must be gone
    // (or reused by an unrelated process, never by our qemu again).
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Err(_) => true,
        Ok(cmdline) => !String::from_utf8_lossy(&cmdline).contains("qemu-system"),
    }
}

#[test]
fn teardown_leaves_no_qemu_netns_or_link() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let ns = Netns::new()?;
    let name = ns.name().to_owned();
    let tap = ns.add_tap("vt0", None)?;

    // Explicit shutdown: the guest powers itself off and qemu exits cleanly.
    let vm = Vm::boot(
        VmSpec::new("teardown-a")
            .netns(ns.path())
            .tap("vt0", mac_from(3)),
    )?;
    let pid = vm.pid();
    vm.run_ok("true", BOOT)?;
    let status = vm.shutdown(Duration::from_secs(10))?;
    ensure!(status.success(), "qemu exited with {status}");
    ensure!(process_gone(pid), "qemu {pid} still there");

    // Drop while a command runs in the foreground: Ctrl-C, poweroff.
    let vm = Vm::boot(
        VmSpec::new("teardown-b")
            .netns(ns.path())
            .tap("vt0", mac_from(3)),
    )?;
    let pid = vm.pid();
    vm.wait_ready(BOOT)?;
    ensure!(
        vm.run("sleep 600", Duration::from_millis(300)).is_err(),
        "sleep returned"
    );
    let start = Instant::now();
    drop(vm);
    ensure!(process_gone(pid), "qemu {pid} still there");
    ensure!(
        start.elapsed() < Duration::from_secs(4),
        "power-off took {:?}",
        start.elapsed()
    );

    // Drop before the guest has booted: qemu is killed.
    let vm = Vm::boot(
        VmSpec::new("teardown-c")
            .netns(ns.path())
            .tap("vt0", mac_from(3)),
    )?;
    let pid = vm.pid();
    drop(vm);
    ensure!(process_gone(pid), "qemu {pid} still there");

    ensure!(
        ns.ip(&["link", "show", "vt0"]).is_ok(),
        "tap vanished early"
    );
    drop(tap);
    ensure!(
        ns.ip(&["link", "show", "vt0"]).is_err(),
        "tap vt0 survived its guard"
    );
    drop(ns);
    ensure!(
        !Path::new(netns::NETNS_RUN_DIR).join(&name).exists(),
        "netns {name} survived"
    );
    let list = netns::run("ip", &["netns", "list"])?;
    ensure!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{list}"
    );
    ensure!(
        netns::run("ip", &["link", "show", "vt0"]).is_err(),
        "vt0 in the host netns"
    );
    Ok(())
}

#[test]
fn run_recovers_after_a_timeout() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let vm = Vm::boot(VmSpec::new("console"))?;
    vm.wait_ready(BOOT)?;
    let err = vm.run("sleep 30", Duration::from_millis(500));
    ensure!(err.is_err(), "{err:?}");
    let out = vm.run("echo still-here; printf 'two\\nlines'", CMD)?;
    ensure!(
        out.status == 0 && out.output == "still-here\ntwo\nlines",
        "{out:?}"
    );
    let out = vm.run("exit_code() { return 7; }; exit_code", CMD)?;
    ensure!(out.status == 7, "{out:?}");
    Ok(())
}

#[test]
fn qemu_failing_at_start_reports_its_log() -> anyhow::Result<()> {
    if !common::can_run() {
        return Ok(());
    }
    let err = Vm::boot(VmSpec::new("bad-args").qemu_args(["-no-such-option"]))
        .err()
        .ok_or_else(|| anyhow::anyhow!("qemu accepted a bogus option"))?;
    ensure!(
        matches!(err, vm_tests::vm::Error::Exited { .. })
            && err.to_string().contains("no-such-option"),
        "{err}"
    );
    Ok(())
}
