//! The demo tears its lab down on Ctrl-C even when its output has nowhere to
//! go: `cargo xtask demo | tee demo.log` and Ctrl-C kill `tee` too, so every
//! line the demo writes after that meets a closed pipe (EPIPE).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linkmesh_tests::require_root;

/// The demo binary (`cargo xtask test` builds it before the integration
/// tests; `LINKMESH_DEMO_BIN` overrides the path).
fn demo_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("LINKMESH_DEMO_BIN") {
        return p.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/linkmesh-demo");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p linkmesh-tools --bin linkmesh-demo` \
         (cargo xtask test does)",
        path.display()
    );
    path
}

/// What of slot `slot`'s lab still exists: namespaces and the root veth.
fn remains(slot: &str) -> Vec<String> {
    let prefix = format!("lmt-{slot}-");
    let mut found: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let root_if = format!("lmt{slot}");
    if Path::new("/sys/class/net").join(&root_if).exists() {
        found.push(root_if);
    }
    found
}

/// Runs the demo with stdout (and, with `stderr_too`, stderr) into pipes,
/// reads until a line containing `until`, closes the pipes, sends SIGINT
/// and checks that the demo exits and leaves nothing behind.
fn interrupt_with_closed_output(until: &str, stderr_too: bool) {
    let mut cmd = Command::new(demo_binary());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.stderr(if stderr_too {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let mut child = cmd.spawn().expect("starting linkmesh-demo");
    let stdout = child.stdout.take().expect("the demo's stdout");
    let mut slot = None;
    let mut seen = Vec::new();
    let reached = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| {
            // "    etcd at ...; hosts lmt-S-h1 ...": the lab's slot.
            if let Some(rest) = line.split_once("hosts lmt-").map(|(_, r)| r) {
                slot = rest.split('-').next().map(str::to_owned);
            }
            seen.push(line.clone());
            line.contains(until)
        });
    // The reader is gone (dropped above): from here every write to stdout
    // fails with EPIPE, as when `tee` dies of the same Ctrl-C.
    drop(child.stderr.take());
    let slot = slot.unwrap_or_else(|| panic!("no lab slot in the demo's output:\n{seen:#?}"));
    assert!(reached, "the demo never printed {until:?}:\n{seen:#?}");
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on our own, unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0, "SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not exit within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let left = remains(&slot);
    assert!(
        left.is_empty(),
        "the demo ({status}) left its lab behind: {left:?}"
    );
    // Interrupted without --ci: a clean exit, not a panic on the closed pipe.
    assert!(status.success(), "the demo exited with {status}");
}

#[test]
fn ctrl_c_with_a_closed_stdout_during_setup_tears_the_lab_down() {
    require_root!();
    interrupt_with_closed_output("[2/6]", false);
}

#[test]
fn ctrl_c_with_closed_stdout_and_stderr_while_live_tears_the_lab_down() {
    require_root!();
    interrupt_with_closed_output("The lab is up", true);
}
