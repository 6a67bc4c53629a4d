//! A pod's own service taking in a UDP route's broadcasts: binds a
//! [`Receiver`] on the route's port and handles each broadcast once, until
//! SIGTERM or ctrl-c.
//!
//! ```text
//! cargo run -p broadcast-receiver --example pod            # UDP port 12000
//! BROADCAST_PORT=12001 cargo run -p broadcast-receiver --example pod
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use broadcast_receiver::{Message, Receiver, ReceiverOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    // The port the route's `targets` send to.
    let port = std::env::var("BROADCAST_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(12000);
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    // Remembers the last 4096 broadcast ids for 10 minutes: every copy of a
    // broadcast seen again within that window is dropped.
    let mut receiver = Receiver::bind(addr, ReceiverOptions::default()).await?;
    eprintln!("Listening for broadcasts on UDP {}", receiver.local_addr()?);

    let mut shutdown = std::pin::pin!(shutdown());
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // `next` never yields a malformed datagram or a repeated copy,
            // and is cancel-safe, so racing it against shutdown loses nothing.
            message = receiver.next() => handle(message?),
        }
    }

    let stats = receiver.stats();
    eprintln!(
        "Stopped: {} datagrams, {} broadcasts, {} duplicates dropped, {} malformed",
        stats.received, stats.delivered, stats.duplicates, stats.malformed
    );
    Ok(())
}

/// The application's own work, once per broadcast.
fn handle(message: Message) {
    // The payload is the body of the request the router received, e.g.
    // `{"key":"user:42"}` for a cache invalidation.
    let body = String::from_utf8_lossy(&message.payload);
    println!(
        "broadcast {} (sequence {}, from {}): {body}",
        message.id, message.sequence, message.from
    );
}

/// Completes on SIGTERM (what Kubernetes sends) or ctrl-c.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
