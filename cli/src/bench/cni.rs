//! `virtlink bench cni`: ADD+DEL of a pod with three networks through
//! virtlink-cni against the same three delegates called directly, in one run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::runtime::{self, call_cni};

/// The three networks of the benchmark pod as delegate configs.
fn delegates(ipam: &Path) -> [(&'static str, Value); 3] {
    [
        (
            "eth0",
            json!({"cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "vl-pod", "isGateway": true,
             "ipam": {"type": "host-local", "subnet": "10.90.0.0/23", "dataDir": ipam}}),
        ),
        (
            "net1",
            json!({"cniVersion": "1.0.0", "name": "blue", "type": "bridge", "bridge": "vl-blue",
             "ipam": {"type": "host-local", "subnet": "10.91.0.0/23", "dataDir": ipam}}),
        ),
        (
            "net2",
            json!({"cniVersion": "1.0.0", "name": "red", "type": "ptp",
             "ipam": {"type": "host-local", "subnet": "10.92.0.0/23", "dataDir": ipam}}),
        ),
    ]
}

pub(super) struct Setup {
    pub(super) dir: tempfile::TempDir,
    pub(super) node: String,
    pub(super) node_path: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) conf: Value,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = netattach::netns::delete(&self.node);
    }
}

pub(super) fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let node = format!("vl-bench-{}", std::process::id());
    let node_path = runtime::create_node(&node)?;
    let bin = dir.path().join("bin");
    runtime::make_bin_dir(&bin)?;
    let ipam = dir.path().join("ipam");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let [(_, cluster), (_, blue), (_, red)] = delegates(&ipam);
    let nad = |name: &str, config: &Value| {
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  config: '{config}'\n---\n"
        )
    };
    let mut yaml = nad("blue", &blue) + &nad("red", &red);
    yaml.push_str("apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench\n  namespace: default\n  annotations:\n    k8s.v1.cni.cncf.io/networks: blue,red\n");
    std::fs::write(manifests.join("objects.yaml"), yaml)?;
    let conf = json!({
        "cniVersion": "1.0.0", "name": "virtlink", "type": "virtlink-cni",
        "clusterNetwork": cluster, "manifestsDir": manifests, "stateDir": dir.path().join("state"),
    });
    Ok(Setup {
        dir,
        node,
        node_path,
        bin,
        conf,
    })
}

impl Setup {
    /// What the pods left behind: IPs host-local still holds, veths on the node.
    pub(super) fn leftovers(&self) -> (usize, usize) {
        let ips = std::fs::read_dir(self.dir.path().join("ipam"))
            .map(|d| {
                d.flatten()
                    .flat_map(|n| std::fs::read_dir(n.path()).into_iter().flatten().flatten())
                    .filter(|f| {
                        f.file_name()
                            .to_string_lossy()
                            .parse::<std::net::IpAddr>()
                            .is_ok()
                    })
                    .count()
            })
            .unwrap_or(0);
        let (_, links) =
            runtime::in_netns(&self.node, &["ip", "-o", "link", "show", "type", "veth"]);
        (ips, links.lines().count())
    }
}

pub(super) const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench";

/// ADD then DEL through virtlink-cni; returns the time and the plugin's peak RSS.
fn through_virtlink(s: &Setup, cid: &str, netns: &str, parallel: bool) -> Result<(Duration, u64)> {
    let plugin = s.bin.join("virtlink-cni");
    let mut conf = s.conf.clone();
    conf["parallel"] = json!(parallel);
    let mut total = Duration::ZERO;
    let mut rss = 0;
    for cmd in ["ADD", "DEL"] {
        let c = call_cni(
            &plugin,
            &s.node_path,
            cmd,
            cid,
            netns,
            "eth0",
            POD_ARGS,
            &s.bin,
            &conf,
            &[("VIRTLINK_CNI_STATS", "1")],
        )?;
        if !c.ok {
            bail!("virtlink-cni {cmd}: {}", c.output);
        }
        total += c.elapsed;
        rss = rss.max(
            c.stderr
                .lines()
                .find_map(|l| l.strip_prefix("virtlink-cni-stats peak_rss_kb="))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        );
    }
    Ok((total, rss))
}

/// The same three delegates called directly, as a runtime would without virtlink.
fn direct(s: &Setup, cid: &str, netns: &str) -> Result<Duration> {
    let ipam = s.dir.path().join("ipam");
    let mut total = Duration::ZERO;
    let mut call = |verb: &str, ifname: &str, conf: &Value| -> Result<Value> {
        let plugin = s.bin.join(conf["type"].as_str().unwrap_or_default());
        let c = call_cni(
            &plugin,
            &s.node_path,
            verb,
            cid,
            netns,
            ifname,
            POD_ARGS,
            &s.bin,
            conf,
            &[],
        )?;
        if !c.ok {
            bail!("direct {verb} {ifname}: {}", c.output);
        }
        total += c.elapsed;
        Ok(c.output)
    };
    let mut results = Vec::new();
    for (ifname, conf) in delegates(&ipam) {
        let out = call("ADD", ifname, &conf)?;
        results.push((ifname, conf, out));
    }
    for (ifname, mut conf, prev) in results.into_iter().rev() {
        conf["prevResult"] = prev;
        call("DEL", ifname, &conf)?;
    }
    Ok(total)
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Named pod namespaces that are removed on drop.
pub(super) struct PodNamespaces(Vec<String>);

impl PodNamespaces {
    /// `n` namespaces `<prefix>-<pid>-<i>`.
    pub(super) fn create(prefix: &str, n: usize) -> Result<Self> {
        let me = PodNamespaces(
            (0..n)
                .map(|i| format!("{prefix}-{}-{i}", std::process::id()))
                .collect(),
        );
        for name in &me.0 {
            netattach::netns::create(name).with_context(|| format!("create {name}"))?;
        }
        Ok(me)
    }

    /// The `i`th namespace's path (CNI_NETNS).
    pub(super) fn path(&self, i: usize) -> String {
        format!("{}/{}", netattach::netns::NETNS_RUN_DIR, self.0[i])
    }
}

/// The CPU, for the benchmark table's machine line.
pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netattach::netns::delete(n);
        }
    }
}

pub fn run(rounds: usize, concurrent: usize) -> Result<()> {
    let s = setup()?;
    let pods = PodNamespaces::create("vl-bench", concurrent.max(2))?;
    let netns = |i: usize| pods.path(i);

    eprintln!("warming up (plugin version cache, page cache)...");
    through_virtlink(&s, "warm-v", &netns(0), true)?;
    direct(&s, "warm-d", &netns(1))?;

    eprintln!("{rounds} rounds of ADD+DEL of a 3-network pod: direct, virtlink-cni sequential, virtlink-cni concurrent, interleaved...");
    let (mut dir, mut seq, mut par, mut seq_diff, mut par_diff) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss = 0;
    for r in 0..rounds {
        // Rotate the order so that no side always runs first.
        let mut d = Duration::ZERO;
        let (mut sq, mut pa) = (Duration::ZERO, Duration::ZERO);
        for k in 0..3 {
            match (r + k) % 3 {
                0 => d = direct(&s, &format!("d{r}"), &netns(1))?,
                1 => {
                    let (t, rss) = through_virtlink(&s, &format!("s{r}"), &netns(0), false)?;
                    peak_rss = peak_rss.max(rss);
                    sq = t;
                }
                _ => {
                    let (t, rss) = through_virtlink(&s, &format!("p{r}"), &netns(0), true)?;
                    peak_rss = peak_rss.max(rss);
                    pa = t;
                }
            }
        }
        dir.push(ms(d));
        seq.push(ms(sq));
        par.push(ms(pa));
        seq_diff.push(ms(sq) - ms(d));
        par_diff.push(ms(pa) - ms(d));
    }
    for v in [&mut dir, &mut seq, &mut par, &mut seq_diff, &mut par_diff] {
        v.sort_by(|a, b| a.total_cmp(b));
    }

    eprintln!("burst: {concurrent} pods added concurrently, then deleted concurrently...");
    let plugin = s.bin.join("virtlink-cni");
    let burst = |cmd: &'static str| -> Result<(usize, Duration)> {
        let started = Instant::now();
        let oks = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..concurrent)
                .map(|i| {
                    let (plugin, s, ns) = (&plugin, &s, netns(i));
                    scope.spawn(move || {
                        call_cni(
                            plugin,
                            &s.node_path,
                            cmd,
                            &format!("burst{i}"),
                            &ns,
                            "eth0",
                            POD_ARGS,
                            &s.bin,
                            &s.conf,
                            &[],
                        )
                        .map(|c| c.ok)
                        .unwrap_or(false)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join())
                .filter(|r| matches!(r, Ok(true)))
                .count()
        });
        Ok((oks, started.elapsed()))
    };
    let (added, add_time) = burst("ADD")?;
    let (deleted, del_time) = burst("DEL")?;
    let (leftover_ips, leftover_links) = s.leftovers();

    let overhead = percentile(&par_diff, 0.5);
    let seq_overhead = percentile(&seq_diff, 0.5);
    let rss_mb = peak_rss as f64 / 1024.0;
    let cpu = cpu_model();
    println!(
        "### CNI: ADD+DEL of a pod with three networks (bridge, bridge, ptp; host-local IPAM)\n"
    );
    println!("Machine: {} cores, {cpu}. Command: `virtlink bench cni --rounds {rounds} --concurrent {concurrent}`\n", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| path | median ms | p90 ms | median overhead vs direct (paired) |");
    println!("|---|---|---|---|");
    println!(
        "| the three delegates called directly, one by one (baseline) | {:.2} | {:.2} | - |",
        percentile(&dir, 0.5),
        percentile(&dir, 0.9)
    );
    println!("| virtlink-cni, `\"parallel\": false` (Multus order) | {:.2} | {:.2} | {seq_overhead:+.2} ms |", percentile(&seq, 0.5), percentile(&seq, 0.9));
    println!("| virtlink-cni, default (secondary networks concurrently) | {:.2} | {:.2} | {overhead:+.2} ms |\n", percentile(&par, 0.5), percentile(&par, 0.9));
    println!("| figure | value | floor | verdict |");
    println!("|---|---|---|---|");
    println!(
        "| median overhead per pod (default) | {overhead:+.2} ms | <= 5 ms | {} |",
        verdict(overhead <= 5.0)
    );
    println!("| median overhead per pod (sequential) | {seq_overhead:+.2} ms | (reported) | - |");
    println!(
        "| peak RSS of virtlink-cni | {rss_mb:.1} MiB | <= 15 MB | {} |",
        verdict(rss_mb <= 15.0)
    );
    println!(
        "| {concurrent} concurrent ADDs | {added} ok in {:.0} ms | all succeed | {} |",
        ms(add_time),
        verdict(added == concurrent)
    );
    println!(
        "| {concurrent} concurrent DELs | {deleted} ok in {:.0} ms; {leftover_ips} IPs, {leftover_links} veths left | all clean | {} |",
        ms(del_time),
        verdict(deleted == concurrent && leftover_ips == 0 && leftover_links == 0)
    );
    if overhead > 5.0
        || rss_mb > 15.0
        || added != concurrent
        || deleted != concurrent
        || leftover_ips + leftover_links > 0
    {
        bail!("a floor was missed (see the table)");
    }
    Ok(())
}

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
