//! The routed VIPs' anchor: a TUN device this process holds open, that
//! their host routes go through. The kernel deletes a TUN device that is
//! not persistent when its last file descriptor closes, and every route
//! through it with the device: so however the agent dies, its routes are
//! withdrawn at once, and the BGP daemon stops attracting traffic to a host
//! that no longer vouches for the VIP. No packet is ever routed through
//! it: the routes sit in the operator's export table, not in one the host
//! forwards with.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The anchor's interface name.
pub const ANCHOR: &str = "lmroutes";

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device (gone with this value, and with the process).
#[derive(Debug)]
pub struct Anchor {
    _fd: OwnedFd,
    pub name: String,
}

impl Anchor {
    /// Creates the TUN device `name` (not persistent) and holds it open.
    ///
    /// # Errors
    /// Opening `/dev/net/tun` or the ioctl failed (no TUN support, no
    /// `CAP_NET_ADMIN`, or another process holds a device of that name).
    pub fn open(name: &str) -> std::io::Result<Self> {
        let path = CString::new("/dev/net/tun").map_err(std::io::Error::other)?;
        // SAFETY: a plain open of a NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(std::io::Error::other("bad interface name"));
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: TUNSETIFF reads (and writes back) an ifreq, which `req`
        // is laid out as, and lives across the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            _fd: fd,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_request_is_an_ifreq() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
