//! A fixed-rate ICMP echo probe, for measuring outages below 10 ms.
//! `ping -i` cannot: while a reply is missing it slows to 100 a second
//! (its flood rule), so every outage it sees lasts at least 10 ms.

use std::io;
use std::net::Ipv4Addr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns;

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An echo request with `id` and `seq`.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = 8;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..].copy_from_slice(b"lmprobe!");
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A raw ICMP socket (root), non-blocking.
fn socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &std::os::fd::OwnedFd, to: Ipv4Addr, message: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero sockaddr_in is valid; fields set below.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default();
    sin.sin_addr.s_addr = u32::from_ne_bytes(to.octets());
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
    // SAFETY: the buffer and address live across the call. A failed send
    // (no route for a moment) is a lost probe, which is what is measured.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const sin).cast(),
            len,
        );
    }
}

/// Every echo reply waiting on `fd` from `from` with `id`.
fn replies(fd: &std::os::fd::OwnedFd, from: Ipv4Addr, id: u16, mut seen: impl FnMut()) {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: receives into a buffer of its stated length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { return };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 8 || buf[12..16] != from.octets() {
            continue;
        }
        let icmp = &buf[ihl..n];
        if icmp[0] == 0 && u16::from_be_bytes([icmp[4], icmp[5]]) == id {
            seen();
        }
    }
}

/// From namespace `ns`, sends an echo request to `target` every
/// `interval` for `duration`, whatever comes back, on a thread; join it
/// for the times (since the start) at which replies arrived.
#[must_use]
pub fn probe(
    ns: &str,
    target: Ipv4Addr,
    duration: Duration,
    interval: Duration,
) -> JoinHandle<io::Result<Vec<Duration>>> {
    netns::spawn_in(ns, move || {
        let fd = socket()?;
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(1) ^ 0x4c4d;
        let start = Instant::now();
        let mut got = Vec::new();
        let mut seq: u16 = 0;
        let mut next = start;
        while start.elapsed() < duration {
            let now = Instant::now();
            if now >= next {
                send(&fd, target, &echo_request(id, seq));
                seq = seq.wrapping_add(1);
                next += interval;
            }
            replies(&fd, target, id, || got.push(start.elapsed()));
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(got)
    })
}

/// The longest time between two replies, if there were two.
#[must_use]
pub fn longest_gap(replies: &[Duration]) -> Option<Duration> {
    replies.windows(2).map(|w| w[1].saturating_sub(w[0])).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero() {
        assert_eq!(checksum(&echo_request(0x1234, 7)), 0);
        assert_eq!(
            longest_gap(&[
                Duration::ZERO,
                Duration::from_millis(3),
                Duration::from_millis(4)
            ]),
            Some(Duration::from_millis(3))
        );
    }
}
