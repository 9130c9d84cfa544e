//! A TCP proxy a test can cut and restore, to cut a minion off from its
//! master while both processes keep running.
//!
//! The master binds 127.0.0.1; the proxy listens on 127.0.0.2 on the same
//! ports, so the publish port the master announces at auth also goes
//! through the proxy. While cut, every connection is closed and new ones
//! are refused (accepted and closed at once).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The proxy; its threads end when it is dropped.
pub struct Proxy {
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards 127.0.0.2:`port` to 127.0.0.1:`port` for each of `ports`.
    pub fn start(ports: &[u16]) -> Proxy {
        let proxy = Proxy {
            cut: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            streams: Arc::new(Mutex::new(Vec::new())),
        };
        for &port in ports {
            let listener = TcpListener::bind(("127.0.0.2", port)).expect("bind 127.0.0.2");
            listener.set_nonblocking(true).expect("nonblocking");
            let (cut, stop, streams) =
                (proxy.cut.clone(), proxy.stop.clone(), proxy.streams.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if cut.load(Ordering::Relaxed) {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            }
                            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            };
                            let _ = client.set_nonblocking(false);
                            pipe(client, server, &streams);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        proxy
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for stream in streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// Copies both ways between `a` and `b` on two threads; both sockets are
/// registered so a cut can shut them down.
fn pipe(a: TcpStream, b: TcpStream, streams: &Arc<Mutex<Vec<TcpStream>>>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    if let (Ok(a3), Ok(b3)) = (a.try_clone(), b.try_clone()) {
        let mut all = streams.lock().unwrap_or_else(|p| p.into_inner());
        all.push(a3);
        all.push(b3);
    }
    std::thread::spawn(move || copy(a, b));
    std::thread::spawn(move || copy(b2, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
