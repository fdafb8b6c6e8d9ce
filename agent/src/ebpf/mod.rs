//! The eBPF programs' user side, and the only code that touches eBPF: the
//! loader of the embedded object, attaching TC programs to named
//! interfaces, reading ring buffers through tokio. One file per program:
//! [`arp`] (`arp_watch`: ARP events), [`vip`] (`vip_watch`: who answers
//! for each floating IP) and [`peer`] (`peer_watch`: when each peer was
//! last heard on the underlay).

pub mod arp;
pub mod peer;
pub mod ports;
pub mod vip;

pub use arp::{ArpOp, ArpPacket, ArpWatcher, load_arp_classifier};
pub use peer::{
    PeerSample, PeerWatcher, PortKind, heartbeats_rejected, peer_sample, set_peers, set_port,
    set_token,
};
pub use ports::PortMapper;
pub use vip::{Conflict, ConflictStream, VipWatcher};

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, tc};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfError};
use linkmesh_common::DROPS_MAP;
use tokio::io::unix::AsyncFd;

/// The eBPF object built by `cargo xtask build-ebpf` (target/bpf/linkmesh.bpf.o).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LINKMESH_BPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("{action} eBPF program {program}: {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("adding the clsact qdisc to interface {interface}: {source}")]
    Qdisc {
        interface: String,
        #[source]
        source: tc::TcError,
    },
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("waiting for ring buffer {map}: {source}")]
    Poll {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ring buffer {map} returned a {len}-byte record, expected {expected}")]
    ShortRecord {
        map: &'static str,
        len: usize,
        expected: usize,
    },
}

/// Loads the embedded object into the kernel (maps created, programs not yet).
///
/// The programs use no CO-RE relocations, so the kernel's BTF (several MB
/// to parse, and the agent's largest allocation by far) is not read.
/// Afterwards the allocator hands what loading took back to the system.
pub fn load() -> Result<Ebpf, WatchError> {
    let ebpf = aya::EbpfLoader::new()
        .btf(None)
        .load(OBJECT)
        .map_err(WatchError::Load);
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe { libc::malloc_trim(0) };
    ebpf
}

/// Loads the classifier `name` into the kernel (once) without attaching it.
pub fn load_classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, WatchError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(WatchError::MissingProgram(name))?
        .try_into()
        .map_err(|source| WatchError::Program {
            action: "typing",
            program: name,
            source,
        })?;
    if program.fd().is_err() {
        program.load().map_err(|source| WatchError::Program {
            action: "loading",
            program: name,
            source,
        })?;
    }
    Ok(program)
}

/// Attaches the loaded classifier `name` to `interface`'s ingress.
pub(crate) fn attach_classifier(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
) -> Result<(), WatchError> {
    attach_classifier_at(ebpf, name, interface, TcAttachType::Ingress)
}

/// Attaches classifier `name` to `interface` at `at` (ingress or egress).
pub(crate) fn attach_classifier_at(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    at: TcAttachType,
) -> Result<(), WatchError> {
    if interface_index(interface).is_none() {
        return Err(WatchError::NoInterface(interface.to_owned()));
    }
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    if !tcx {
        // Legacy TC needs the clsact qdisc; "exists" is fine.
        if let Err(source) = tc::qdisc_add_clsact(interface) {
            let exists = matches!(&source, tc::TcError::AlreadyAttached)
                || source.to_string().contains("exists");
            if !exists {
                return Err(WatchError::Qdisc {
                    interface: interface.to_owned(),
                    source,
                });
            }
        }
    }
    load_classifier(ebpf, name)?
        .attach(interface, at)
        .map_err(|source| WatchError::Attach {
            program: name,
            interface: interface.to_owned(),
            source,
        })?;
    Ok(())
}

/// Attaches `name` again wherever in `attached` it no longer runs: its TCX
/// link was detached by someone, or the interface was re-created. Logs
/// each, and returns how many it attached again. Only TCX (kernel >= 6.6)
/// attachments can be checked; on older kernels nothing is done.
pub(crate) fn reattach_missing(
    ebpf: &mut Ebpf,
    name: &'static str,
    attached: &BTreeSet<String>,
) -> usize {
    if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
        return 0;
    }
    let Ok(ours) = load_classifier(ebpf, name).and_then(|p| {
        p.info()
            .map(|i| i.id())
            .map_err(|source| WatchError::Program {
                action: "reading the info of",
                program: name,
                source,
            })
    }) else {
        return 0;
    };
    let mut restored = 0;
    for interface in attached {
        // A missing interface cannot be attached to; it is tried again at
        // the next check.
        let Ok((_, programs)) = SchedClassifier::query_tcx(interface, TcAttachType::Ingress) else {
            continue;
        };
        if programs.iter().any(|p| p.id() == ours) {
            continue;
        }
        match attach_classifier(ebpf, name, interface) {
            Ok(()) => {
                restored += 1;
                tracing::warn!(program = name, %interface, "the program was detached (by hand?): attached again");
            }
            Err(e) => {
                tracing::warn!(program = name, %interface, error = %e, "the program was detached and cannot be attached again");
            }
        }
    }
    restored
}

/// The index of a network interface in the current namespace.
#[must_use]
pub fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Slot `slot` of a `DROPS` map, summed over CPUs.
pub(crate) fn drops(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, WatchError> {
    let values = map.get(&slot, 0).map_err(|source| WatchError::Map {
        map: DROPS_MAP,
        source,
    })?;
    Ok(values.iter().sum())
}

/// Waits for the next record of a ring buffer and parses it.
pub(crate) async fn next_record<T>(
    events: &mut AsyncFd<RingBuf<MapData>>,
    map: &'static str,
    expected: usize,
    parse: fn(&[u8]) -> Option<T>,
) -> Result<T, WatchError> {
    loop {
        let mut guard = events
            .readable_mut()
            .await
            .map_err(|source| WatchError::Poll { map, source })?;
        let record = guard
            .get_inner_mut()
            .next()
            .map(|item| (item.len(), parse(&item)));
        match record {
            Some((_, Some(event))) => return Ok(event),
            Some((len, None)) => return Err(WatchError::ShortRecord { map, len, expected }),
            None => guard.clear_ready(),
        }
    }
}

/// A map key for an IPv4 address (network byte order, as the programs read it).
pub(crate) fn key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_has_no_index() {
        assert_eq!(interface_index("lm-no-such-if0"), None);
        assert_eq!(interface_index("bad\0name"), None);
    }
}
