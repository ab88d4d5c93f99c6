//! `virtlink-device-plugin`: run the kubelet device plugin, check a config,
//! or measure it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use virtlink_device_plugin::{bench, chain, config, deviceinfo, plugin};

#[derive(Debug, Parser)]
#[command(name = "virtlink-device-plugin", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the configured pools to kubelet.
    Run {
        /// Pool config (`{"resourceList": [...]}`, JSON or YAML); watched for changes.
        #[arg(
            long,
            env = "VIRTLINK_DP_CONFIG",
            default_value = "/etc/virtlink/device-plugin.json"
        )]
        config: PathBuf,
        /// sysfs root to discover devices under.
        #[arg(long, default_value = "/sys")]
        sysfs_root: PathBuf,
        /// kubelet's device-plugins dir (kubelet.sock, our sockets, its checkpoint).
        #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
        kubelet_dir: PathBuf,
        /// Where NPWG device-info files are written.
        #[arg(long, default_value = deviceinfo::DEFAULT_DIR)]
        devinfo_dir: PathBuf,
        /// Where allocations are persisted across restarts.
        #[arg(long, default_value = "/var/lib/virtlink/device-plugin")]
        state_dir: PathBuf,
        /// How often sysfs is rescanned (and the config and kubelet socket checked).
        #[arg(long, default_value_t = 250)]
        rescan_interval_ms: u64,
    },
    /// Check a config file and print its pools.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Measure Allocate latency and the VF-appears-to-kubelet-sees-it delay
    /// (fake sysfs in a temp dir, in-process kubelet stand-in).
    Bench {
        #[arg(long, default_value_t = 8)]
        vfs_per_pf: u32,
        #[arg(long, default_value_t = 2000)]
        allocations: usize,
        #[arg(long, default_value_t = 40)]
        rounds: usize,
        #[arg(long, default_value_t = 250)]
        rescan_interval_ms: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIRTLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtlink-device-plugin: start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtlink-device-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Run {
            config,
            sysfs_root,
            kubelet_dir,
            devinfo_dir,
            state_dir,
            rescan_interval_ms,
        } => {
            let settings = plugin::Settings {
                config_path: config,
                sysfs_root,
                kubelet_dir,
                devinfo_dir,
                state_dir,
                rescan_interval: Duration::from_millis(rescan_interval_ms.max(10)),
            };
            let cancel = CancellationToken::new();
            tokio::spawn(stop_on_signal(cancel.clone()));
            plugin::run(settings, cancel).await.map_err(|e| chain(&e))
        }
        Cmd::CheckConfig { config } => {
            let c = config::Config::load(&config).map_err(|e| chain(&e))?;
            for p in &c.pools {
                println!("{} ({:?})", p.full_name(), p.device_type);
            }
            Ok(())
        }
        Cmd::Bench {
            vfs_per_pf,
            allocations,
            rounds,
            rescan_interval_ms,
        } => {
            let params = bench::BenchParams {
                vfs_per_pf,
                allocations,
                rounds,
                rescan_interval: Duration::from_millis(rescan_interval_ms.max(10)),
            };
            let r = bench::run(&params).await.map_err(|e| chain(&e))?;
            println!(
                "pool: {} VFs on 2 PFs, rescan interval {rescan_interval_ms} ms",
                2 * vfs_per_pf
            );
            println!(
                "allocate (1 device, unix socket round trip): {}",
                r.allocate
            );
            println!(
                "vf appears in sysfs -> ListAndWatch update: {}",
                r.vf_appear
            );
            println!(
                "vf removed from sysfs -> ListAndWatch update: {}",
                r.vf_disappear
            );
            Ok(())
        }
    }
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, stopping");
    cancel.cancel();
}
