//! UDP fan-out: the broadcast's body as a datagram to every pod, sent
//! `repeat` times `interval` apart so that losing some copies is survived.
//!
//! Every copy carries the same broadcast id and sequence number in its
//! header (see [`broadcast_receiver::frame`]), so receivers drop the duplicates. UDP has
//! no acknowledgement: a datagram counted as sent left this host, nothing
//! more.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::OnceCell;

use crate::route::UdpSettings;
use crate::vocabulary::target::Target;
use broadcast_receiver::frame;

/// The answer document of a UDP broadcast (HTTP 202: datagrams were sent;
/// UDP has no acknowledgement, so nothing is known about their arrival).
#[derive(Debug, Clone, Serialize)]
pub struct UdpReport {
    /// The broadcast id, carried in every datagram's header.
    pub id: String,
    /// The route's name.
    pub route: String,
    /// Always `"udp"`.
    pub protocol: &'static str,
    /// The sequence number carried in every datagram's header.
    pub sequence: u64,
    /// Whether every copy to every pod was handed to the network.
    pub ok: bool,
    /// How many pods the datagrams went to.
    pub targets: usize,
    /// Copies sent to each pod.
    pub repeat: u8,
    /// The size of each datagram, header included.
    pub datagram_bytes: usize,
    /// One entry per pod, in target order.
    pub results: Vec<UdpDelivery>,
}

/// What was sent to one pod.
#[derive(Debug, Clone, Serialize)]
pub struct UdpDelivery {
    /// The pod's address.
    pub target: String,
    /// Datagrams handed to the network for this pod.
    pub datagrams: u32,
    /// The last send error, if any copy could not be sent.
    pub error: Option<String>,
}

/// The sockets datagrams leave from (IPv4 and, where available, IPv6).
#[derive(Default)]
pub struct UdpSender {
    v4: OnceCell<UdpSocket>,
    v6: OnceCell<UdpSocket>,
}

impl UdpSender {
    /// Sends `payloads[i]` to `targets[i]`, each `settings.repeat` times.
    /// The caller has checked the datagram sizes against the route's limit.
    pub async fn send(
        &self,
        targets: &[Target],
        id: &str,
        sequence: u64,
        payloads: &[bytes::Bytes],
        settings: &UdpSettings,
    ) -> Vec<UdpDelivery> {
        let mut deliveries: Vec<UdpDelivery> = targets
            .iter()
            .map(|target| UdpDelivery {
                target: target.authority(),
                datagrams: 0,
                error: None,
            })
            .collect();
        for copy in 0..settings.repeat {
            if copy > 0 {
                tokio::time::sleep(settings.interval).await;
            }
            for ((target, payload), delivery) in targets.iter().zip(payloads).zip(&mut deliveries) {
                let datagram = frame::encode(copy, sequence, id, payload);
                match self.send_to(&datagram, target.addr).await {
                    Ok(()) => delivery.datagrams += 1,
                    Err(error) => delivery.error = Some(error.to_string()),
                }
            }
        }
        deliveries
    }

    async fn send_to(&self, datagram: &[u8], addr: SocketAddr) -> io::Result<()> {
        let (cell, bind): (_, SocketAddr) = match addr {
            SocketAddr::V4(_) => (&self.v4, (Ipv4Addr::UNSPECIFIED, 0).into()),
            SocketAddr::V6(_) => (&self.v6, (Ipv6Addr::UNSPECIFIED, 0).into()),
        };
        let socket = cell.get_or_try_init(|| UdpSocket::bind(bind)).await?;
        let sent = socket.send_to(datagram, addr).await?;
        if sent == datagram.len() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "only {sent} of {} bytes were sent",
                datagram.len()
            )))
        }
    }
}
