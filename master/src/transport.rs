//! How the master's centre reaches minions, and the ZeroMQ sockets that
//! do it in production.
//!
//! The centre sees only [`Outbound`] (publish to every minion, reply to
//! one peer) and a channel of [`Incoming`] messages, so it runs in a unit
//! test with [`MemoryOutbound`] and messages pushed by hand. In
//! production [`bind`] opens PUB (`publish_port`: jobs and beacons) and
//! ROUTER (`return_port`: everything minions send, and the replies).
//! Sends never count as delivery: returns are acknowledged by the
//! application after they are stored, and missed jobs are re-sent through
//! catch-up.

use std::net::IpAddr;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// Messages larger than this are dropped before they are decoded: no
/// legitimate minion message comes near it. The sockets refuse larger
/// ones from their frame headers already (`halite_daemon::socket_options`);
/// this check covers the few KiB of room left for routing frames.
pub const MAX_FRAME: usize = halite_proto::envelope::MAX_MESSAGE_BYTES;

/// A socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} on {addr}: {source}")]
pub struct BindError {
    /// Which socket.
    pub what: &'static str,
    /// Where.
    pub addr: String,
    /// Why.
    pub source: zeromq::ZmqError,
}

/// A message from a minion: the ROUTER identity to reply to, and the bytes.
pub struct Incoming {
    /// Routing identity of the sending DEALER.
    pub peer: Bytes,
    /// The envelope bytes.
    pub body: Bytes,
}

/// What the master sends: the centre's only view of the transport.
pub trait Outbound: Send + Sync + 'static {
    /// Queues `body` on the PUB socket under `topic` (every subscribed
    /// minion gets it; none is told it was delivered).
    fn publish(&self, topic: &str, body: Vec<u8>);
    /// Queues `body` for one peer; a peer that has gone is skipped.
    fn reply(&self, peer: Bytes, body: Vec<u8>);
}

/// The ZeroMQ sockets' send sides.
#[derive(Clone)]
pub struct ZmqOutbound {
    /// PUB sender.
    pub publisher: Publisher,
    /// ROUTER sender.
    pub replier: Replier,
}

impl Outbound for ZmqOutbound {
    fn publish(&self, topic: &str, body: Vec<u8>) {
        self.publisher.publish(topic, body);
    }
    fn reply(&self, peer: Bytes, body: Vec<u8>) {
        self.replier.send(peer, body);
    }
}

/// Something the master sent, as [`MemoryOutbound`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Published under a topic.
    Published {
        /// `job` or `beacon`.
        topic: String,
        /// The signed envelope.
        body: Vec<u8>,
    },
    /// Replied to one peer.
    Replied {
        /// The peer's routing identity.
        peer: Bytes,
        /// The signed envelope.
        body: Vec<u8>,
    },
}

/// An in-memory transport: everything sent goes to a channel the test
/// reads, in order.
pub struct MemoryOutbound {
    tx: mpsc::UnboundedSender<Sent>,
}

impl MemoryOutbound {
    /// The transport and the receiving end of what it sends.
    pub fn new() -> (MemoryOutbound, mpsc::UnboundedReceiver<Sent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (MemoryOutbound { tx }, rx)
    }
}

impl Outbound for MemoryOutbound {
    fn publish(&self, topic: &str, body: Vec<u8>) {
        let _ = self.tx.send(Sent::Published {
            topic: topic.to_owned(),
            body,
        });
    }
    fn reply(&self, peer: Bytes, body: Vec<u8>) {
        let _ = self.tx.send(Sent::Replied { peer, body });
    }
}

/// Sends replies to minions through the ROUTER.
#[derive(Clone)]
pub struct Replier {
    tx: mpsc::UnboundedSender<(Bytes, Vec<u8>)>,
}

impl Replier {
    /// Queues `body` for the peer; a peer that has gone is skipped.
    pub fn send(&self, peer: Bytes, body: Vec<u8>) {
        let _ = self.tx.send((peer, body));
    }
}

/// Publishes on the PUB socket.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
}

impl Publisher {
    /// Queues a message for `topic`.
    pub fn publish(&self, topic: &str, body: Vec<u8>) {
        let _ = self.tx.send((topic.to_owned(), body));
    }
}

/// The bound sockets and their actual ports.
pub struct Bound {
    /// PUB port in use.
    pub publish_port: u16,
    /// ROUTER port in use.
    pub return_port: u16,
    /// Publishes jobs and beacons.
    pub publisher: Publisher,
    /// Sends replies.
    pub replier: Replier,
    /// Everything minions send.
    pub incoming: mpsc::Receiver<Incoming>,
}

fn endpoint(interface: IpAddr, port: u16) -> String {
    match interface {
        IpAddr::V4(ip) => format!("tcp://{ip}:{port}"),
        IpAddr::V6(ip) => format!("tcp://[{ip}]:{port}"),
    }
}

fn port_of(endpoint: &zeromq::Endpoint) -> u16 {
    match endpoint {
        zeromq::Endpoint::Tcp(_, port) => *port,
        _ => 0,
    }
}

/// Binds PUB and ROUTER and starts the tasks that drive them until
/// `shutdown` fires.
pub async fn bind(
    interface: IpAddr,
    publish_port: u16,
    return_port: u16,
    shutdown: CancellationToken,
) -> Result<Bound, BindError> {
    let mut publish = PubSocket::with_options(halite_daemon::socket_options());
    let addr = endpoint(interface, publish_port);
    let bound_pub = publish.bind(&addr).await.map_err(|source| BindError {
        what: "publish_port",
        addr: addr.clone(),
        source,
    })?;
    let mut router = RouterSocket::with_options(halite_daemon::socket_options());
    let addr = endpoint(interface, return_port);
    let bound_router = router.bind(&addr).await.map_err(|source| BindError {
        what: "return_port",
        addr: addr.clone(),
        source,
    })?;

    let (pub_tx, mut pub_rx) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = pub_rx.recv() => {
                    let Some((topic, body)) = next else { break };
                    let mut message = ZmqMessage::from(topic);
                    message.push_back(Bytes::from(body));
                    if let Err(e) = publish.send(message).await {
                        tracing::warn!(error = %e, "publish failed");
                    }
                }
            }
        }
    });

    let (mut send_half, mut recv_half) = router.split();
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<(Bytes, Vec<u8>)>();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = reply_rx.recv() => {
                    let Some((peer, body)) = next else { break };
                    let mut message = ZmqMessage::from(peer);
                    message.push_back(Bytes::from(body));
                    if let Err(e) = send_half.send(message).await {
                        tracing::debug!(error = %e, "reply to a peer that has gone");
                    }
                }
            }
        }
    });

    let (in_tx, in_rx) = mpsc::channel::<Incoming>(4096);
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = recv_half.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    // Per-peer errors end that peer's stream; never spin on them.
                    tracing::debug!(error = %e, "router receive error");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let mut frames = message.into_vec().into_iter();
            let (Some(peer), Some(body), None) = (frames.next(), frames.next(), frames.next())
            else {
                tracing::warn!("dropped a message that is not [identity, envelope]");
                continue;
            };
            if body.len() > MAX_FRAME {
                tracing::warn!(bytes = body.len(), "dropped an oversized message");
                continue;
            }
            if in_tx.send(Incoming { peer, body }).await.is_err() {
                break;
            }
        }
    });

    Ok(Bound {
        publish_port: port_of(&bound_pub),
        return_port: port_of(&bound_router),
        publisher: Publisher { tx: pub_tx },
        replier: Replier { tx: reply_tx },
        incoming: in_rx,
    })
}
