//! `virtlink bench agent`: the same 3-network pod as `bench cni`, ADD through
//! the node agent (virtlink-cni as a shim) against direct mode, interleaved
//! in one run; then a burst of concurrent ADDs through the agent with its
//! peak RSS (`VmHWM`).

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::cni::{cpu_model, ms, percentile, setup, verdict, PodNamespaces, Setup, POD_ARGS};
use crate::runtime::call_cni;

/// The agent process; killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl AgentProcess {
    fn start(s: &Setup, socket: &Path, max_in_flight: usize) -> Result<Self> {
        let node = std::fs::File::open(&s.node_path).context("open node namespace")?;
        let log = std::fs::File::create(s.dir.path().join("agent.log")).context("agent log")?;
        let mut cmd = Command::new(std::env::current_exe().context("own executable")?);
        cmd.args(["--log", "warn", "agent", "--socket"])
            .arg(socket)
            .args([
                "--max-in-flight",
                &max_in_flight.to_string(),
                "--max-queued",
                "1024",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let fd = node.as_fd().as_raw_fd();
        // SAFETY: setns is async-signal-safe and only changes the forked
        // child's namespace before exec; the fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    std::os::fd::BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        let me = AgentProcess(cmd.spawn().context("start virtlink agent")?);
        drop(node);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if Instant::now() > deadline {
                bail!("the agent did not listen on {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    /// A `/proc/PID/status` field in KiB (VmHWM, VmRSS).
    fn kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

pub fn run(rounds: usize, burst: usize, max_in_flight: usize) -> Result<()> {
    let s = setup()?;
    let socket = s.dir.path().join("agent.sock");
    let agent = AgentProcess::start(&s, &socket, max_in_flight)?;
    let mut via_agent = s.conf.clone();
    via_agent["daemonSocket"] = json!(socket);
    let plugin = s.bin.join("virtlink-cni");
    let pods = PodNamespaces::create("vl-benchag", burst.max(2))?;
    let netns = |i: usize| pods.path(i);
    let call = |cmd: &str, cid: &str, ns: &str, conf: &serde_json::Value| -> Result<Duration> {
        let c = call_cni(
            &plugin,
            &s.node_path,
            cmd,
            cid,
            ns,
            "eth0",
            POD_ARGS,
            &s.bin,
            conf,
            &[],
        )?;
        if !c.ok {
            bail!("{cmd} {cid}: {}", c.output);
        }
        Ok(c.elapsed)
    };

    eprintln!("warming up...");
    for (i, conf) in [&s.conf, &via_agent].into_iter().enumerate() {
        call("ADD", &format!("warm{i}"), &netns(i), conf)?;
        call("DEL", &format!("warm{i}"), &netns(i), conf)?;
    }
    eprintln!("{rounds} rounds: ADD then DEL, direct and through the agent, interleaved...");
    let (mut direct_add, mut agent_add, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    let (mut direct_del, mut agent_del) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut pair = [0.0; 2];
        for k in 0..2 {
            let side = (r + k) % 2;
            let conf = if side == 0 { &s.conf } else { &via_agent };
            let cid = format!("r{r}s{side}");
            let add = ms(call("ADD", &cid, &netns(side), conf)?);
            let del = ms(call("DEL", &cid, &netns(side), conf)?);
            pair[side] = add;
            if side == 0 {
                direct_add.push(add);
                direct_del.push(del);
            } else {
                agent_add.push(add);
                agent_del.push(del);
            }
        }
        diff.push(pair[1] - pair[0]);
    }
    for v in [
        &mut direct_add,
        &mut agent_add,
        &mut diff,
        &mut direct_del,
        &mut agent_del,
    ] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    let rss_before = agent.kib("VmHWM:");

    eprintln!("burst: {burst} concurrent ADDs through the agent, then {burst} DELs...");
    let first_error = std::sync::Mutex::new(None::<String>);
    let burst_run = |cmd: &'static str| -> (usize, usize, Duration) {
        let started = Instant::now();
        let outcomes: Vec<Option<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..burst)
                .map(|i| {
                    let (plugin, s, conf, ns) = (&plugin, &s, &via_agent, netns(i));
                    let first_error = &first_error;
                    scope.spawn(move || {
                        match call_cni(
                            plugin,
                            &s.node_path,
                            cmd,
                            &format!("burst{i}"),
                            &ns,
                            "eth0",
                            POD_ARGS,
                            &s.bin,
                            conf,
                            &[],
                        ) {
                            Ok(c) if c.ok => None,
                            Ok(c) => {
                                if let Ok(mut e) = first_error.lock() {
                                    e.get_or_insert(format!("{cmd}: {}", c.output));
                                }
                                Some(c.output["code"].as_u64().unwrap_or(0))
                            }
                            Err(e) => {
                                if let Ok(mut first) = first_error.lock() {
                                    first.get_or_insert(format!("{cmd}: {e:#}"));
                                }
                                Some(0)
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Some(0)))
                .collect()
        });
        let ok = outcomes.iter().filter(|o| o.is_none()).count();
        let retry = outcomes.iter().filter(|o| **o == Some(11)).count();
        (ok, retry, started.elapsed())
    };
    let (added, add_retry, add_time) = burst_run("ADD");
    let peak = agent.kib("VmHWM:");
    let (deleted, _, del_time) = burst_run("DEL");
    let rss_after = agent.kib("VmRSS:");
    let (leftover_ips, leftover_links) = s.leftovers();

    let peak_mib = peak as f64 / 1024.0;
    let overhead = percentile(&diff, 0.5);
    let cpu = cpu_model();
    println!("### Agent: ADD of a pod with three networks, through the agent and direct\n");
    println!(
        "Machine: {} cores, {cpu}. Command: `virtlink bench agent --rounds {rounds} --burst {burst} --max-in-flight {max_in_flight}`\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("| path | ADD median ms | ADD p90 ms | DEL median ms |");
    println!("|---|---|---|---|");
    println!(
        "| direct: virtlink-cni does the work | {:.2} | {:.2} | {:.2} |",
        percentile(&direct_add, 0.5),
        percentile(&direct_add, 0.9),
        percentile(&direct_del, 0.5)
    );
    println!(
        "| agent: virtlink-cni shim -> virtlink agent | {:.2} | {:.2} | {:.2} |\n",
        percentile(&agent_add, 0.5),
        percentile(&agent_add, 0.9),
        percentile(&agent_del, 0.5)
    );
    println!("| figure | value | floor | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| median ADD difference, agent - direct (paired) | {overhead:+.2} ms | (reported) | - |"
    );
    println!(
        "| agent peak RSS (VmHWM) after {rounds} rounds | {:.1} MiB | (reported) | - |",
        rss_before as f64 / 1024.0
    );
    println!(
        "| agent peak RSS (VmHWM) after the burst of {burst} ADDs | {peak_mib:.1} MiB | < 64 MiB | {} |",
        verdict(peak_mib < 64.0)
    );
    println!(
        "| agent RSS after the DELs | {:.1} MiB | (reported) | - |",
        rss_after as f64 / 1024.0
    );
    println!(
        "| {burst} concurrent ADDs | {added} ok, {add_retry} told to retry (code 11), in {:.0} ms | all succeed | {} |",
        ms(add_time),
        verdict(added == burst)
    );
    println!(
        "| {burst} concurrent DELs | {deleted} ok in {:.0} ms; {leftover_ips} IPs, {leftover_links} veths left | all clean | {} |",
        ms(del_time),
        verdict(deleted == burst && leftover_ips == 0 && leftover_links == 0)
    );
    if let Some(e) = first_error.lock().ok().and_then(|e| e.clone()) {
        println!("\nFirst failure in the burst: {e}");
    }
    drop(agent);
    if peak_mib >= 64.0 || added != burst || deleted != burst || leftover_ips + leftover_links > 0 {
        bail!("a floor was missed (see the table)");
    }
    Ok(())
}
