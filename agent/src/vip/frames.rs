//! The frames floating IPs need, built (pure): gratuitous ARP and
//! unsolicited Neighbour Advertisements to announce a VIP, ARP probes to
//! ask who holds one. `kernel::packet` sends them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addr::MacAddr;

const BROADCAST: [u8; 6] = [0xff; 6];

fn arp(op: u16, mac: MacAddr, ip: Ipv4Addr, target_mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes());
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&ip.octets());
    f
}

/// A gratuitous ARP request: who-has VIP tell VIP, broadcast.
#[must_use]
pub fn garp_request(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(1, mac, ip, [0; 6])
}

/// A gratuitous ARP reply: VIP is-at MAC, broadcast.
#[must_use]
pub fn garp_reply(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(2, mac, ip, mac.0)
}

/// An ARP probe for `vip` (RFC 5227 form: sender address 0.0.0.0, so the
/// owner's neighbour table is left alone), to `dst` or broadcast. The
/// owner's kernel answers it with a reply that names the VIP.
#[must_use]
pub fn arp_probe(src: MacAddr, dst: Option<MacAddr>, vip: Ipv4Addr) -> Vec<u8> {
    let mut f = arp(1, src, Ipv4Addr::UNSPECIFIED, [0; 6]);
    if let Some(dst) = dst {
        f[..6].copy_from_slice(&dst.0);
    }
    f[38..42].copy_from_slice(&vip.octets());
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Truncation is the point: the folded sum fits 16 bits.
    !(u16::try_from(sum).unwrap_or(0xffff))
}

/// An unsolicited Neighbour Advertisement for `ip` (Override set, not
/// Solicited) to all nodes (ff02::1), with the target link-layer option.
#[must_use]
pub fn unsolicited_na(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    // ICMPv6: type 136, code 0, checksum, flags (O = 0x20), reserved,
    // target, option 2 (target link-layer address, 1 unit of 8 bytes).
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac.0);
    let len = u16::try_from(icmp.len()).unwrap_or(u16::MAX);
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&ip.octets());
    pseudo.extend_from_slice(&all_nodes.octets());
    pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let sum = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// What announces `ip` at `mac`: a gratuitous ARP request and reply, or
/// one unsolicited NA.
#[must_use]
pub fn announcement(mac: MacAddr, ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => vec![garp_request(mac, v4), garp_reply(mac, v4)],
        IpAddr::V6(v6) => vec![unsolicited_na(mac, v6)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x18, 0, 0, 0, 1]);

    #[test]
    fn probe_bytes() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let owner = MacAddr([0x02, 0x18, 0, 0, 0, 2]);
        let f = arp_probe(MAC, Some(owner), vip);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &owner.0, "unicast to the owner");
        assert_eq!(&f[6..12], &MAC.0);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &MAC.0, "sender MAC");
        assert_eq!(&f[28..32], &[0; 4], "sender IP 0.0.0.0");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &vip.octets(), "target: the VIP");
        assert_eq!(&arp_probe(MAC, None, vip)[0..6], &[0xff; 6]);
    }

    #[test]
    fn garp_bytes() {
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let req = garp_request(MAC, ip);
        assert_eq!(req.len(), 42);
        assert_eq!(&req[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&req[6..12], &MAC.0);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(
            &req[14..22],
            &[0, 1, 8, 0, 6, 4, 0, 1],
            "Ethernet/IPv4 request"
        );
        assert_eq!(&req[22..28], &MAC.0, "sender MAC");
        assert_eq!(&req[28..32], &[198, 18, 0, 100], "sender IP is the VIP");
        assert_eq!(&req[32..38], &[0; 6]);
        assert_eq!(&req[38..42], &[198, 18, 0, 100], "target IP is the VIP");
        let rep = garp_reply(MAC, ip);
        assert_eq!(&rep[20..22], &[0, 2], "reply");
        assert_eq!(&rep[32..38], &MAC.0);
    }

    #[test]
    fn na_bytes_and_checksum() {
        let ip: Ipv6Addr = "fd00::100".parse().expect("ip");
        let f = unsolicited_na(MAC, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[20], 58, "next header ICMPv6");
        assert_eq!(f[21], 255, "hop limit 255");
        let icmp = &f[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "Override, not Solicited, not Router");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC.0);
        // The checksum over pseudo-header + message folds to zero.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..38]);
        pseudo.extend_from_slice(&f[38..54]);
        pseudo.extend_from_slice(&32u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        assert_eq!(checksum(&pseudo), 0);
    }
}
