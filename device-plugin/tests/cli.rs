//! The binary's refusals at start: an invalid config names the bad field and
//! the plugin exits non-zero without serving anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

use std::process::Command;

fn run_with(config: &str) -> (bool, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink-device-plugin"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--sysfs-root")
        .arg(dir.path().join("sys"))
        .arg("--kubelet-dir")
        .arg(dir.path().join("kubelet"))
        .arg("--devinfo-dir")
        .arg(dir.path().join("devinfo"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

#[test]
fn invalid_configs_are_refused_at_start_naming_the_field() {
    let cases = [
        (
            "resourceList:\n- resourceName: a\n  deviceType: sriov\n",
            "resourceList[0].deviceType",
        ),
        (
            "resourceList:\n- resourceName: a\n  selectors: {rootDevices: ['0000:03:00#0-3']}\n",
            "rootDevices",
        ),
        (
            "resourceList:\n- resourceName: a\n  selectors: {pciAddresses: ['0000:03:00.9']}\n",
            "pciAddresses",
        ),
        (
            "resourceList:\n- resourceName: a\n  selectors: {pfNames: ['ens1f0#3-1']}\n",
            "pfNames",
        ),
        (
            "resourceList:\n- resourceName: ok\n- resourceName: ''\n",
            "resourceList[1].resourceName",
        ),
        (
            "resourceList:\n- resourceName: v\n  deviceType: vlan\n  vlan: {master: eth0, id: 0}\n",
            "resourceList[0].vlan.id",
        ),
        ("resourceList: {}\n", "resourceList"),
    ];
    for (config, field) in cases {
        let (ok, stderr, dir) = run_with(config);
        assert!(!ok, "started with {config:?}");
        assert!(
            stderr.contains(field),
            "stderr {stderr:?} does not name {field}"
        );
        assert!(
            !dir.path().join("kubelet").exists()
                || std::fs::read_dir(dir.path().join("kubelet"))
                    .unwrap()
                    .next()
                    .is_none(),
            "no socket may be created"
        );
    }
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink-device-plugin"))
        .args(["check-config", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.json"));
}

#[test]
fn check_config_lists_pools() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"resourceList": [{"resourceName": "a"}, {"resourceName": "v", "resourcePrefix": "example.com", "deviceType": "vlan", "vlan": {"master": "eth0", "id": "10-12"}}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink-device-plugin"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "virtlink.io/a (NetDevice)\nexample.com/v (Vlan)\n");
}
