//! Kernel state of a namespace, read back over rtnetlink: links, addresses,
//! bridge FDB entries and neighbours. Tests assert on these, not on the
//! agent's own idea of what it programmed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::Handle;

use crate::netns;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vxlan`, ...).
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or other controller) it is enslaved to.
    pub master: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// A bridge/VXLAN forwarding entry (`AF_BRIDGE` neighbour).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// `NDA_DST`: the remote VTEP for VXLAN entries.
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// `NTF_SELF`: the device's own table (VXLAN), not the bridge's.
    pub own: bool,
}

/// An IPv4/IPv6 neighbour (ARP/NDP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub state: NeighbourState,
}

fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// Must be called inside a tokio runtime (it spawns the connection task).
fn connect() -> Handle {
    let (connection, handle, _) = rtnetlink::new_connection().expect("opening rtnetlink");
    tokio::spawn(connection);
    handle
}

/// Links of namespace `ns`.
#[must_use]
pub fn links(ns: &str) -> Vec<Link> {
    netns::block_on_in(ns, || async {
        let handle = connect();
        let msgs: Vec<_> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("dumping links");
        msgs.into_iter()
            .map(|m| {
                let mut link = Link {
                    index: m.header.index,
                    name: String::new(),
                    kind: None,
                    mac: None,
                    mtu: None,
                    up: m.header.flags.contains(LinkFlags::Up),
                    master: None,
                };
                for attr in m.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Address(a) => link.mac = mac6(&a),
                        LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
                        LinkAttribute::Controller(i) => link.master = Some(i),
                        LinkAttribute::LinkInfo(infos) => {
                            for info in infos {
                                if let LinkInfo::Kind(kind) = info {
                                    link.kind = Some(kind.to_string());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                link
            })
            .collect()
    })
}

/// The link named `name` in namespace `ns`, if any.
#[must_use]
pub fn link(ns: &str, name: &str) -> Option<Link> {
    links(ns).into_iter().find(|l| l.name == name)
}

/// IPv4 and IPv6 addresses of namespace `ns`.
#[must_use]
pub fn addresses(ns: &str) -> Vec<Address> {
    netns::block_on_in(ns, || async {
        let handle = connect();
        let msgs: Vec<_> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("dumping addresses");
        msgs.into_iter()
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some(Address {
                    ifindex: m.header.index,
                    addr,
                    prefix_len: m.header.prefix_len,
                })
            })
            .collect()
    })
}

fn neighbour_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    linkmesh::kernel::fdb::dst_of(addr)
}

async fn dump_neighbours(family: AddressFamily) -> Vec<NeighbourMessage> {
    let handle = connect();
    handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .expect("dumping neighbours")
}

/// Bridge and VXLAN forwarding entries of namespace `ns`.
#[must_use]
pub fn fdb(ns: &str) -> Vec<FdbEntry> {
    netns::block_on_in(ns, || async {
        dump_neighbours(AddressFamily::Bridge)
            .await
            .into_iter()
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for attr in &m.attributes {
                    match attr {
                        NeighbourAttribute::LinkLayerAddress(a) => mac = mac6(a),
                        NeighbourAttribute::Destination(d) => dst = neighbour_ip(d),
                        _ => {}
                    }
                }
                Some(FdbEntry {
                    ifindex: m.header.ifindex,
                    mac: mac?,
                    dst,
                    permanent: linkmesh::kernel::fdb::is_permanent(m.header.state),
                    own: m.header.flags.contains(NeighbourFlags::Own),
                })
            })
            .collect()
    })
}

/// Deletes the zero-MAC (peer) entry for `dst` on `device` in `ns` with
/// iproute2, as an operator would by hand.
pub fn delete_peer_entry(ns: &str, device: &str, dst: &str) {
    let out = std::process::Command::new("bridge")
        .args([
            "-n",
            ns,
            "fdb",
            "del",
            "00:00:00:00:00:00",
            "dev",
            device,
            "dst",
            dst,
        ])
        .output()
        .expect("running bridge");
    assert!(
        out.status.success(),
        "bridge fdb del {dst} on {device} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// IPv4 and IPv6 neighbour entries of namespace `ns`.
#[must_use]
pub fn neighbours(ns: &str) -> Vec<Neighbour> {
    netns::block_on_in(ns, || async {
        let mut all = dump_neighbours(AddressFamily::Inet).await;
        all.extend(dump_neighbours(AddressFamily::Inet6).await);
        all.into_iter()
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for attr in &m.attributes {
                    match attr {
                        NeighbourAttribute::LinkLayerAddress(a) => mac = mac6(a),
                        NeighbourAttribute::Destination(d) => ip = neighbour_ip(d),
                        _ => {}
                    }
                }
                Some(Neighbour {
                    ifindex: m.header.ifindex,
                    ip: ip?,
                    mac,
                    state: m.header.state,
                })
            })
            .collect()
    })
}

/// `BPF_PROG_QUERY`, `BPF_LINK_GET_FD_BY_ID`, `BPF_LINK_DETACH` (bpf(2)).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `enum bpf_attach_type`: `BPF_TCX_INGRESS`.
const BPF_TCX_INGRESS: u32 = 46;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of 64 bytes,
    // the size passed; the kernel writes only within it and the buffers it
    // points to, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<[u64; 8]>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Detaches, "by hand", the TCX links of program `program` on `ifname`'s
/// ingress in namespace `ns` (as `bpftool link detach` would): the owner's
/// links turn defunct. Returns how many were detached.
#[must_use]
pub fn detach_tcx(ns: &str, ifname: &str, program: &str) -> usize {
    let (ifname, program) = (ifname.to_owned(), program.to_owned());
    netns::run_in(ns, move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let (_, programs) =
            SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress).expect("querying TCX");
        let wanted: Vec<u32> = programs
            .iter()
            .filter(|p| p.name_as_str() == Some(program.as_str()))
            .map(aya::programs::ProgramInfo::id)
            .collect();
        let name = std::ffi::CString::new(ifname.clone()).expect("name");
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        let mut prog_ids = [0u32; 64];
        let mut link_ids = [0u32; 64];
        // union bpf_attr, query: target_ifindex, attach_type | query_flags,
        // attach_flags | prog_ids | count, pad | prog_attach_flags |
        // link_ids | link_attach_flags | revision.
        let mut attr = [0u64; 8];
        attr[0] = u64::from(ifindex) | (u64::from(BPF_TCX_INGRESS) << 32);
        attr[2] = prog_ids.as_mut_ptr() as u64;
        attr[3] = 64;
        attr[5] = link_ids.as_mut_ptr() as u64;
        bpf(BPF_PROG_QUERY, &mut attr).expect("BPF_PROG_QUERY");
        let count = usize::try_from(attr[3] & 0xffff_ffff).expect("count");
        let mut detached = 0;
        for i in 0..count.min(64) {
            if !wanted.contains(&prog_ids[i]) || link_ids[i] == 0 {
                continue;
            }
            let mut attr = [0u64; 8];
            attr[0] = u64::from(link_ids[i]);
            let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).expect("BPF_LINK_GET_FD_BY_ID");
            let mut attr = [0u64; 8];
            attr[0] = u64::try_from(fd).expect("fd");
            bpf(BPF_LINK_DETACH, &mut attr).expect("BPF_LINK_DETACH");
            // SAFETY: the fd was just returned by the kernel and is ours.
            unsafe { libc::close(i32::try_from(fd).expect("fd")) };
            detached += 1;
        }
        detached
    })
}

/// Names of the TCX programs on `ifname`'s ingress in namespace `ns`.
#[must_use]
pub fn tcx_programs(ns: &str, ifname: &str) -> Vec<String> {
    let ifname = ifname.to_owned();
    netns::run_in(ns, move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let (_, programs) =
            SchedClassifier::query_tcx(&ifname, TcAttachType::Ingress).expect("querying TCX");
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    })
}

/// IDs of every BPF program and map on the machine (`BPF_PROG_GET_NEXT_ID`,
/// `BPF_MAP_GET_NEXT_ID`).
#[must_use]
pub fn bpf_ids() -> (BTreeSet<u32>, BTreeSet<u32>) {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    let ids = |cmd| {
        let mut all = BTreeSet::new();
        let mut id = 0u32;
        loop {
            let mut attr = [0u64; 8];
            attr[0] = u64::from(id);
            if bpf(cmd, &mut attr).is_err() {
                return all;
            }
            id = u32::try_from(attr[0] >> 32).expect("next id");
            all.insert(id);
        }
    };
    (ids(BPF_PROG_GET_NEXT_ID), ids(BPF_MAP_GET_NEXT_ID))
}

/// IDs of the BPF programs and maps some process holds a descriptor to
/// (directly, or through a link: `/proc/*/fdinfo/*`).
#[must_use]
pub fn bpf_ids_held() -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut maps) = (BTreeSet::new(), BTreeSet::new());
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return (progs, maps);
    };
    for p in processes.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(text) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(id) = value.parse::<u32>() else {
                    continue;
                };
                match key {
                    "prog_id:" => {
                        progs.insert(id);
                    }
                    "map_id:" => {
                        maps.insert(id);
                    }
                    _ => {}
                }
            }
        }
    }
    (progs, maps)
}

/// BPF programs and maps that appeared since `before` (from [`bpf_ids`])
/// and that no process holds: objects a dead owner left behind (attached
/// with nobody to detach them, or pinned). Objects other tests create
/// meanwhile are held by their processes, so they do not count.
#[must_use]
pub fn bpf_orphans(before: &(BTreeSet<u32>, BTreeSet<u32>)) -> (Vec<u32>, Vec<u32>) {
    let (progs, maps) = bpf_ids();
    let (held_progs, held_maps) = bpf_ids_held();
    let orphans = |now: BTreeSet<u32>, before: &BTreeSet<u32>, held: &BTreeSet<u32>| {
        now.into_iter()
            .filter(|id| !before.contains(id) && !held.contains(id))
            .collect::<Vec<_>>()
    };
    (
        orphans(progs, &before.0, &held_progs),
        orphans(maps, &before.1, &held_maps),
    )
}
