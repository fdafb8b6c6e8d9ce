//! A service on a lab host and a client's questions to it: a TCP and a UDP
//! server in a host's namespace that answer every question with a fixed
//! reply (the host's name, say), and the client side of both.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns;

/// How long the servers sleep between polls, and a client waits at most.
const POLL: Duration = Duration::from_millis(2);
const WAIT: Duration = Duration::from_secs(1);

/// A TCP server on all addresses of a namespace and a UDP server on one
/// (so its replies leave from that address); stopped, and their sockets
/// closed, on drop.
pub struct Service {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Serves `reply` on TCP port `tcp` and on UDP at `udp` in `ns`; `udp`
    /// need not be on the host yet (a floating IP), as with `IP_FREEBIND`.
    #[must_use]
    pub fn start(ns: &str, tcp: u16, udp: SocketAddr, reply: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let tcp_thread = {
            let (stop, reply, ready) = (stop.clone(), reply.to_owned(), ready_tx.clone());
            netns::spawn_in(ns, move || {
                let listener = TcpListener::bind(("0.0.0.0", tcp)).expect("binding the TCP port");
                listener.set_nonblocking(true).expect("nonblocking");
                let _ = ready.send(());
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.write_all(reply.as_bytes());
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })
        };
        let udp_thread = {
            let (stop, reply) = (stop.clone(), reply.to_owned());
            netns::spawn_in(ns, move || {
                let socket = freebind_udp(udp).expect("binding the UDP port");
                socket
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .expect("timeout");
                let _ = ready_tx.send(());
                let mut buf = [0; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(reply.as_bytes(), from);
                    }
                }
            })
        };
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the servers are listening");
        }
        Self {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP socket bound to `addr` (IPv4), which need not be local.
fn freebind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr is a zeroed sockaddr_in filled in field by field.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            (&raw const one).cast(),
            4,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits");
        sin.sin_port = v4.port().to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>())
            .expect("a sockaddr_in's size fits");
        if libc::bind(fd, (&raw const sin).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(socket)
    }
}

/// From `ns`, connects to `to` over TCP and reads the answer until the
/// server closes; `None` if the connection or the read failed.
#[must_use]
pub fn ask_tcp(ns: &str, to: SocketAddr) -> Option<String> {
    netns::run_in(ns, move || {
        let mut conn = TcpStream::connect_timeout(&to, WAIT).ok()?;
        conn.set_read_timeout(Some(WAIT)).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer)
    })
}

/// From `ns`, sends one datagram to `to` and waits for one back: its text
/// and where it came from.
#[must_use]
pub fn ask_udp(ns: &str, to: SocketAddr) -> Option<(String, SocketAddr)> {
    netns::run_in(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.set_read_timeout(Some(WAIT)).ok()?;
        socket.send_to(b"who?", to).ok()?;
        let mut buf = [0; 512];
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}
