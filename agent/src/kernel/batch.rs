//! Many netlink requests in few system calls.
//!
//! Programming thousands of FDB entries one request at a time spends most
//! of its time on per-request overhead. Here each `sendmsg` carries a chunk
//! of requests and the ACKs are read back together, the way `bridge
//! -batch` would if it did not wait for each reply. Chunks stay small
//! enough that their ACKs always fit the socket's receive buffer. What the
//! requests are is the caller's business (`fdb` builds them).

use std::collections::HashMap;
use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Requests per `sendmsg`; their ACKs (about 768 bytes of buffer each, with
/// `NETLINK_CAP_ACK`) fit the default 208 KiB receive buffer many times.
const CHUNK: usize = 64;

/// Sends `requests` (each a message and its flags beyond `NLM_F_REQUEST |
/// NLM_F_ACK`), blocking (call from a blocking thread), in the calling
/// thread's network namespace. Returns one result per request, in order.
/// Requests are built and encoded a chunk at a time, so memory stays at one
/// chunk's worth however many there are.
pub fn send(
    requests: impl ExactSizeIterator<Item = (RouteNetlinkMessage, u16)>,
) -> io::Result<Vec<io::Result<()>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Smaller ACKs (no copy of the request); failure only costs buffer room.
    let _ = socket.set_cap_ack(true);
    let mut results: Vec<Option<io::Result<()>>> = (0..requests.len()).map(|_| None).collect();
    let mut requests = requests.enumerate().peekable();
    let mut buf = Vec::new();
    let mut rbuf = vec![0u8; 64 * 1024];
    while requests.peek().is_some() {
        buf.clear();
        let mut pending: HashMap<u32, usize> = HashMap::with_capacity(CHUNK);
        for (i, (message, flags)) in requests.by_ref().take(CHUNK) {
            // Sequence numbers start at 1: 0 is what the kernel uses for
            // notifications.
            let seq = u32::try_from(i + 1).map_err(io::Error::other)?;
            let mut m = NetlinkMessage::from(message);
            m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            m.header.sequence_number = seq;
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.buffer_len(), 0);
            m.serialize(&mut buf[start..]);
            pending.insert(seq, i);
        }
        let sent = socket.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::other(format!(
                "netlink sent {sent} of {} bytes",
                buf.len()
            )));
        }
        while !pending.is_empty() {
            let n = socket.recv(&mut &mut rbuf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[offset..n])
                    .map_err(|e| io::Error::other(format!("parsing a netlink reply: {e}")))?;
                let len = usize::try_from(reply.header.length).map_err(io::Error::other)?;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if let NetlinkPayload::Error(e) = reply.payload
                    && let Some(index) = pending.remove(&reply.header.sequence_number)
                {
                    results[index] = Some(if e.code.is_some() {
                        Err(e.to_io())
                    } else {
                        Ok(())
                    });
                }
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("no reply"))))
        .collect())
}
