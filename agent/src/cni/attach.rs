//! ADD, DEL and CHECK: a veth pair from the workload's namespace to the
//! segment's bridge, addressed by the delegated IPAM plugin.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ipam;
use super::spec::{CniError, CniResult, Command, Env, Interface, NetConf, code, parse_prefix};
use super::view::{self, SegmentView};
use crate::kernel::link::LinkState;
use crate::kernel::veth::VethSpec;
use crate::kernel::{KernelError, Netlink};

/// `IFLA_IFALIAS` of the host ends this plugin creates.
pub const ALIAS_PREFIX: &str = "linkmesh-cni:";
/// The agent's state directory unless the configuration names another.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/linkmesh";

/// The host end's name: the same for the same container and interface,
/// so DEL finds it when the workload's namespace is already gone.
#[must_use]
pub fn host_end_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"linkmesh-cni\0")
        .chain_update(container_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(ifname.as_bytes())
        .finalize();
    let hex = digest[..6].iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("lm{}", &hex[..11])
}

/// The segment's bridge here, as the agent's view and the kernel agree:
/// the bridge exists and the segment's device is enslaved to it.
struct Bridge {
    index: u32,
    name: String,
    mtu: u32,
}

async fn segment_bridge(nl: &Netlink, conf: &NetConf) -> Result<Bridge, CniError> {
    let dir = conf
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let file = view::path(&dir);
    let view = SegmentView::read(&file).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            code::TRY_AGAIN_LATER
        } else {
            code::IO_FAILURE
        };
        CniError::new(
            code,
            format!(
                "reading the linkmesh agent's segment view {} (is the agent running with --state-dir {}?)",
                file.display(),
                dir.display()
            ),
        )
        .details(e.to_string())
    })?;
    let segment = &conf.segment;
    let host = &view.host;
    let state = view.segments.get(segment).ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_SEGMENT,
            format!("segment {segment} is not defined in etcd"),
        )
    })?;
    if !state.joined {
        return Err(CniError::new(
            code::SEGMENT_NOT_HERE,
            format!("host {host} has not joined segment {segment} (its agent's --segments)"),
        ));
    }
    let Some(name) = state.bridge.clone() else {
        return Err(CniError::new(
            code::SEGMENT_NOT_HERE,
            format!(
                "segment {segment} has no bridge on host {host}: give it one (its record's \
                 \"bridge\", or the agent's --bridge)"
            ),
        ));
    };
    let not_up = |why: String| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("segment {segment}'s bridge {name} is not ready on host {host}: {why}"),
        )
    };
    let bridge = nl
        .link_by_name(&name)
        .await?
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| not_up("no such bridge".into()))?;
    let device = nl
        .link_by_name(segment)
        .await?
        .ok_or_else(|| not_up(format!("no device {segment}")))?;
    if device.master != Some(bridge.index) {
        return Err(not_up(format!("device {segment} is not enslaved to it")));
    }
    Ok(Bridge {
        index: bridge.index,
        mtu: state.mtu.or(bridge.mtu).unwrap_or(1500),
        name,
    })
}

fn netns_of(env: &Env) -> Result<(PathBuf, std::fs::File), CniError> {
    let path = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let file = std::fs::File::open(&path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace {} cannot be opened", path.display()),
        )
        .details(e.to_string())
    })?;
    Ok((path, file))
}

/// ADD: attach, address, and answer with the result.
pub async fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<CniResult, CniError> {
    let nl = Netlink::connect()?;
    let bridge = segment_bridge(&nl, conf).await?;
    let (netns, netns_file) = netns_of(env)?;
    let ipam = match conf.ipam_type() {
        Some(kind) => ipam::delegate(env, kind, Command::Add, stdin)?.unwrap_or_default(),
        None => CniResult::default(),
    };
    match attach(env, &nl, &bridge, &netns, &netns_file, ipam, conf).await {
        Ok(result) => Ok(result),
        Err(e) => {
            // Leave nothing half made: the addresses go too.
            if let Some(kind) = conf.ipam_type() {
                let _ = ipam::delegate(env, kind, Command::Del, stdin);
            }
            Err(e)
        }
    }
}

async fn attach(
    env: &Env,
    nl: &Netlink,
    bridge: &Bridge,
    netns: &Path,
    netns_file: &std::fs::File,
    ipam: CniResult,
    conf: &NetConf,
) -> Result<CniResult, CniError> {
    let host_end = host_end_name(&env.container_id, &env.ifname);
    let spec = VethSpec {
        name: host_end.clone(),
        alias: format!("{ALIAS_PREFIX}{}", conf.segment),
        mtu: bridge.mtu,
        master: bridge.index,
        peer_name: env.ifname.clone(),
    };
    nl.create_veth(&spec, netns_file).await?;
    // From here on a failure removes the pair this call made (and only
    // that: an interface of the same name made by anyone else stays).
    let result = configure(env, nl, bridge, netns, ipam, conf, spec).await;
    if result.is_err() {
        let _ = detach(env, nl).await;
    }
    result
}

async fn configure(
    env: &Env,
    nl: &Netlink,
    bridge: &Bridge,
    netns: &Path,
    ipam: CniResult,
    conf: &NetConf,
    spec: VethSpec,
) -> Result<CniResult, CniError> {
    let host_end = spec.name.clone();
    let host = nl
        .link_by_name(&host_end)
        .await?
        .ok_or_else(|| CniError::new(code::IO_FAILURE, format!("{host_end} vanished")))?;
    nl.change_link(
        host.index,
        &host_end,
        &crate::kernel::link::LinkChange {
            alias: Some(spec.alias.clone()),
            ..Default::default()
        },
    )
    .await?;
    let inside = Netlink::connect_at(netns)?;
    let pod = inside.link_by_name(&env.ifname).await?.ok_or_else(|| {
        CniError::new(
            code::IO_FAILURE,
            format!("{} did not arrive in {}", env.ifname, netns.display()),
        )
    })?;
    for ip in &ipam.ips {
        let (addr, len) = parse_prefix(&ip.address)?;
        inside
            .add_address(pod.index, &env.ifname, addr, len)
            .await?;
    }
    inside
        .change_link(
            pod.index,
            &env.ifname,
            &crate::kernel::link::LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .await?;
    for route in &ipam.routes {
        let (dst, len) = parse_prefix(&route.dst)?;
        let gw = route.gw.or_else(|| gateway_for(&ipam, dst));
        inside.add_route(dst, len, gw, pod.index).await?;
    }
    let mac = |l: &LinkState| l.mac.map(|m| m.to_string()).unwrap_or_default();
    let mut result = ipam;
    result.interfaces = vec![
        Interface {
            name: host_end,
            mac: mac(&host),
            mtu: Some(bridge.mtu),
            sandbox: None,
        },
        Interface {
            name: env.ifname.clone(),
            mac: mac(&pod),
            mtu: Some(bridge.mtu),
            sandbox: Some(netns.display().to_string()),
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(1);
    }
    tracing::info!(segment = %conf.segment, bridge = %bridge.name, container = %env.container_id, "attached");
    Ok(result.for_version(&conf.cni_version))
}

/// The gateway IPAM gave for `dst`'s family, for a route that names none.
fn gateway_for(ipam: &CniResult, dst: IpAddr) -> Option<IpAddr> {
    ipam.ips
        .iter()
        .filter_map(|ip| ip.gateway)
        .find(|gw| gw.is_ipv4() == dst.is_ipv4())
}

/// Removes the pair through its host end, found by its name and only if
/// this plugin made it (its alias): the workload's end goes with it, and
/// nothing else in the workload's namespace is touched. Nothing there is
/// not an error.
async fn detach(env: &Env, nl: &Netlink) -> Result<(), CniError> {
    let host_end = host_end_name(&env.container_id, &env.ifname);
    if let Some(link) = nl.link_by_name(&host_end).await?.filter(|l| {
        l.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
    }) {
        ignore_gone(nl.delete_link(link.index, &host_end).await)?;
    }
    Ok(())
}

fn ignore_gone(result: Result<(), KernelError>) -> Result<(), CniError> {
    match result {
        Err(e) if e.errno() != Some(libc::ENODEV) => Err(e.into()),
        _ => Ok(()),
    }
}

/// DEL: release the addresses and remove the pair; done twice, the second
/// finds nothing and succeeds.
pub async fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if let Some(kind) = conf.ipam_type() {
        ipam::delegate(env, kind, Command::Del, stdin)?;
    }
    let nl = Netlink::connect()?;
    detach(env, &nl).await?;
    tracing::info!(segment = %conf.segment, container = %env.container_id, "detached");
    Ok(())
}

/// CHECK: the attachment the previous result describes is still whole.
pub async fn check(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, not {}",
                conf.cni_version
            ),
        ));
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let nl = Netlink::connect()?;
    let bridge = segment_bridge(&nl, conf).await?;
    let (netns, _) = netns_of(env)?;
    let failed = |what: String| CniError::new(code::CHECK_FAILED, what);
    let host_end = host_end_name(&env.container_id, &env.ifname);
    let host = nl
        .link_by_name(&host_end)
        .await?
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .ok_or_else(|| {
            failed(format!(
                "the host end {host_end} of {} is missing",
                env.ifname
            ))
        })?;
    if host.master != Some(bridge.index) {
        return Err(failed(format!(
            "the host end {host_end} is not on segment {}'s bridge {}",
            conf.segment, bridge.name
        )));
    }
    let inside = Netlink::connect_at(&netns)?;
    let pod = inside
        .link_by_name(&env.ifname)
        .await?
        .filter(|l| l.kind.as_deref() == Some("veth") && l.up)
        .ok_or_else(|| {
            failed(format!(
                "{} in {} is missing or down",
                env.ifname,
                netns.display()
            ))
        })?;
    let present: Vec<(IpAddr, u8)> = inside
        .addresses()
        .await?
        .into_iter()
        .filter(|a| a.ifindex == pod.index)
        .map(|a| (a.addr, a.prefix_len))
        .collect();
    for ip in &prev.ips {
        let want = parse_prefix(&ip.address)?;
        if !present.contains(&want) {
            return Err(failed(format!(
                "{} lacks its address {}",
                env.ifname, ip.address
            )));
        }
    }
    if let Some(kind) = conf.ipam_type() {
        ipam::delegate(env, kind, Command::Check, stdin)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ends_are_stable_short_and_distinct() {
        let a = host_end_name("pod-1", "vxeth0");
        assert_eq!(a, host_end_name("pod-1", "vxeth0"));
        assert!(a.len() <= 15 && a.starts_with("lm"), "{a}");
        assert_ne!(a, host_end_name("pod-1", "vxeth1"));
        assert_ne!(a, host_end_name("pod-2", "vxeth0"));
        assert_ne!(host_end_name("pod-1v", "xeth0"), a, "no ambiguity");
    }
}
