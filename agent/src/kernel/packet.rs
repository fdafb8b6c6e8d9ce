//! Raw Ethernet frames out of an interface (`AF_PACKET`), for the
//! announcements and probes of floating IPs: the only raw socket the agent
//! opens.

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("opening a raw socket on {interface}: {source}")]
    Open {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sending on {interface}: {source}")]
    Send {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// A raw (`AF_PACKET`) sender on one interface. The socket is opened with
/// protocol 0 and never bound: it receives nothing (no copy of the
/// interface's traffic), and opening it registers no packet hook, so it
/// costs no RCU grace period (binding a socket that listens does: several
/// milliseconds, which an announcement must not wait for).
pub struct RawSender {
    interface: String,
    ifindex: i32,
    fd: std::os::fd::OwnedFd,
}

impl RawSender {
    /// Opens a send-only `AF_PACKET` socket for `interface`.
    pub fn open(interface: &str) -> Result<Self, PacketError> {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(interface)
            .map_err(|_| PacketError::NoInterface(interface.to_owned()))?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let ifindex = i32::try_from(ifindex)
            .ok()
            .filter(|i| *i != 0)
            .ok_or_else(|| PacketError::NoInterface(interface.to_owned()))?;
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(PacketError::Open {
                interface: interface.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            interface: interface.to_owned(),
            ifindex,
            // SAFETY: `fd` was just created and nothing else owns it.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one whole Ethernet frame (header included).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), PacketError> {
        use std::os::fd::AsRawFd;
        let err = |source| PacketError::Send {
            interface: self.interface.clone(),
            source,
        };
        if frame.len() < 14 {
            return Err(err(std::io::Error::other(
                "a frame shorter than its header",
            )));
        }
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::sa_family_t::try_from(libc::AF_PACKET).unwrap_or_default();
        // The frame's own EtherType, as it is on the wire.
        to.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        let len =
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default();
        // SAFETY: `frame` and `to` live across the call, with their lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                len,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(_) => Err(err(std::io::Error::other("a short send"))),
            Err(_) => Err(err(std::io::Error::last_os_error())),
        }
    }
}
