//! Finding the underlay this host sends VXLAN from.

use std::net::IpAddr;

use anyhow::{Context, bail};
use tracing::info;

use super::Underlay;
use crate::kernel::Netlink;

/// Finds the underlay: `--address`, else `--device`'s first global IPv4,
/// else the default route's device's. Says where it came from.
pub async fn resolve(
    nl: &Netlink,
    address: Option<IpAddr>,
    device: Option<&str>,
) -> anyhow::Result<Underlay> {
    let links = nl.links().await.context("listing links")?;
    let addrs = nl.addresses().await.context("listing addresses")?;
    let (address, ifindex, source) = if let Some(address) = address {
        let a = addrs
            .iter()
            .find(|a| a.addr == address)
            .with_context(|| format!("--address {address} is not configured on any interface"))?;
        if let Some(dev) = device
            && !links.iter().any(|l| l.name == dev && l.index == a.ifindex)
        {
            bail!("--address {address} is not on --device {dev}");
        }
        (address, a.ifindex, "--address")
    } else {
        let (ifindex, source) = if let Some(dev) = device {
            let link = links
                .iter()
                .find(|l| l.name == dev)
                .with_context(|| format!("--device {dev}: no such interface"))?;
            (link.index, "--device")
        } else {
            let index = nl
                .default_route_ifindex()
                .await
                .context("reading the default route")?
                .context("no --address or --device given and there is no default route")?;
            (index, "the default route's device")
        };
        let a = addrs
            .iter()
            .find(|a| a.ifindex == ifindex && a.global && a.addr.is_ipv4())
            .with_context(|| {
                format!("interface {ifindex} ({source}) has no global IPv4 address")
            })?;
        (a.addr, ifindex, source)
    };
    let link = links
        .iter()
        .find(|l| l.index == ifindex)
        .with_context(|| format!("interface {ifindex} disappeared"))?;
    let underlay = Underlay {
        address,
        ifindex,
        ifname: link.name.clone(),
        mtu: link.mtu.unwrap_or(1500),
    };
    info!(address = %underlay.address, device = %underlay.ifname, mtu = underlay.mtu, source, "underlay");
    Ok(underlay)
}
