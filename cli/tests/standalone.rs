//! `virtlink up` / `virtlink down` on the shipped example, as the README's
//! demo runs them: real namespaces, the reference plugins, virtlink-cni.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is a failed test

use std::process::Command;

fn virtlink(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_virtlink"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

/// Takes the environment down even when an assertion fails.
struct Down(Vec<String>);

impl Drop for Down {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = virtlink(&args);
    }
}

#[test]
fn up_attaches_every_network_and_down_removes_everything() {
    // virtlink-cni must sit next to virtlink, as `cargo build` puts it.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_virtlink"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        bin_dir.join("virtlink-cni").exists(),
        "build virtlink-cni first (cargo build --workspace --bins)"
    );
    let dir = tempfile::tempdir().unwrap();
    // A unique file name gives unique namespace names.
    let name = format!("t{}", std::process::id());
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pods.yaml"),
        &file,
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let (f, r) = (file.to_str().unwrap(), run_dir.to_str().unwrap());
    let _down = Down(vec!["down".into(), f.into(), "--run-dir".into(), r.into()]);

    let (ok, out) = virtlink(&["up", f, "--run-dir", r]);
    assert!(ok, "up failed:\n{out}");
    for net in ["podnet", "default/blue", "default/green", "default/red"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(net) && l.contains("->"))
            .unwrap_or_else(|| panic!("no connectivity line for {net}:\n{out}"));
        assert!(line.contains("ok"), "{net}: {line}");
    }
    assert!(
        out.contains("10.10.2.10") && out.contains("02:00:00:0a:00:01"),
        "{out}"
    );
    assert!(netns_list().contains(&format!("vl-{name}-client")));

    let (ok, out) = virtlink(&["down", f, "--run-dir", r]);
    assert!(ok, "down failed:\n{out}");
    assert!(
        !netns_list().contains(&format!("vl-{name}-")),
        "namespaces left: {}",
        netns_list()
    );
    assert!(!run_dir.join(&name).exists(), "state left");

    // A file with no pod is refused with a clear message, leaving nothing.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "kind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let (ok, out) = virtlink(&["up", empty.to_str().unwrap(), "--run-dir", r]);
    assert!(!ok && out.contains("no Pod"), "{out}");
    assert!(
        !run_dir.join("empty").exists(),
        "state left by a refused file"
    );

    // A pod naming a NAD the file lacks: up fails and takes down what it made.
    let broken = dir.path().join(format!("b{name}.yaml"));
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: z\n  annotations: {k8s.v1.cni.cncf.io/networks: missing}\n",
    )
    .unwrap();
    let (ok, out) = virtlink(&["up", broken.to_str().unwrap(), "--run-dir", r]);
    assert!(!ok && out.contains("default/missing"), "{out}");
    assert!(
        !netns_list().contains(&format!("vl-b{name}-")),
        "namespaces left: {}",
        netns_list()
    );
}
