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
    #[error("interface {0} is not Ethernet")]
    NotEthernet(String),
}

/// A raw (`AF_PACKET`) sender on one interface.
pub struct RawSender {
    interface: String,
    tx: Box<dyn pnet_datalink::DataLinkSender>,
}

impl RawSender {
    /// Opens an `AF_PACKET` socket on `interface`.
    pub fn open(interface: &str) -> Result<Self, PacketError> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| PacketError::NoInterface(interface.to_owned()))?;
        let config = pnet_datalink::Config {
            read_timeout: Some(std::time::Duration::from_millis(1)),
            ..pnet_datalink::Config::default()
        };
        match pnet_datalink::channel(&iface, config) {
            Ok(pnet_datalink::Channel::Ethernet(tx, _rx)) => Ok(Self {
                interface: interface.to_owned(),
                tx,
            }),
            Ok(_) => Err(PacketError::NotEthernet(interface.to_owned())),
            Err(source) => Err(PacketError::Open {
                interface: interface.to_owned(),
                source,
            }),
        }
    }

    /// Sends one whole frame.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), PacketError> {
        match self.tx.send_to(frame, None) {
            Some(Ok(())) => Ok(()),
            Some(Err(source)) => Err(PacketError::Send {
                interface: self.interface.clone(),
                source,
            }),
            None => Err(PacketError::Send {
                interface: self.interface.clone(),
                source: std::io::Error::other("the sender refused the frame"),
            }),
        }
    }
}
