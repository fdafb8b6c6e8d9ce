//! Calling a CNI plugin as a container runtime does: the spec's
//! environment variables, the network configuration on stdin, the result
//! or error on stdout.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns;

/// Where Debian's containernetworking-plugins puts its plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// Runs `plugin` inside the namespace `runtime_netns` (the runtime's, as
/// kubelet's would be) with only `vars` (and `PATH`) in its environment:
/// whether it succeeded, its stdout, and how long it took.
#[must_use]
pub fn call(
    plugin: &Path,
    runtime_netns: &str,
    vars: &[(&str, &str)],
    stdin: &str,
) -> (bool, String, Duration) {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let stdin = stdin.to_owned();
    // A child forked from a thread in the namespace starts there.
    netns::run_in(runtime_netns, move || {
        let started = Instant::now();
        let mut child = cmd.spawn().expect("running the CNI plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing the configuration");
        let out = child
            .wait_with_output()
            .expect("waiting for the CNI plugin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed(),
        )
    })
}

/// [`call`] for the pod `container_id` whose namespace is
/// `/run/netns/<pod_netns>`, interface `vxeth0`, plugins on [`CNI_PATH`].
#[must_use]
pub fn call_for_pod(
    plugin: &Path,
    runtime_netns: &str,
    command: &str,
    container_id: &str,
    pod_netns: &str,
    stdin: &str,
) -> (bool, String, Duration) {
    let netns = format!("/run/netns/{pod_netns}");
    let vars = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "vxeth0"),
        ("CNI_PATH", CNI_PATH),
    ];
    call(plugin, runtime_netns, &vars, stdin)
}
