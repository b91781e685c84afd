//! The userland proxy that lets processes on the host reach published
//! ports, as Docker's `docker-proxy` does: it listens on the published port
//! (connections from outside never reach it: the uplink's guard drops them
//! and the switch translates them) and relays each connection to the
//! container through the host's interface on the container's network.
//!
//! One thread (`vswitch-proxy`) waits on every listener with `mio`, so a
//! host with 10,000 published ports has one accepting thread, not 10,000.
//! Each accepted connection is relayed by a thread of its own, as long as it
//! lasts (these are the host's own connections to its containers, few and
//! usually short).
use crossbeam::channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

const WAKE: Token = Token(usize::MAX);

enum Cmd {
    Add(usize, TcpListener, SocketAddr),
    Remove(usize),
}

/// The proxy thread's handle (the thread lives as long as the process).
#[derive(Debug, Clone)]
pub struct Proxies {
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Add(t, _, a) => write!(f, "Add({t}, {a})"),
            Cmd::Remove(t) => write!(f, "Remove({t})"),
        }
    }
}

impl Proxies {
    /// Starts the accepting thread.
    pub fn new() -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (tx, rx) = crossbeam::channel::unbounded();
        std::thread::Builder::new()
            .name("vswitch-proxy".into())
            .spawn(move || accept_loop(poll, rx))?;
        Ok(Self {
            tx,
            waker,
            next: Arc::default(),
        })
    }

    /// Listens on `listen` and relays each connection to `target`.
    pub fn start(&self, listen: SocketAddr, target: SocketAddr) -> Result<Proxy, String> {
        let l = TcpListener::bind(listen).map_err(|e| {
            format!("host port {listen} is in use on the host ({e}); pick another --host-port")
        })?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tx
            .send(Cmd::Add(token, l, target))
            .map_err(|_| "the proxy thread is gone".to_string())?;
        let _ = self.waker.wake();
        Ok(Proxy {
            token,
            addr,
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        })
    }
}

/// One published port's listener; dropping it closes the listener.
#[derive(Debug)]
pub struct Proxy {
    token: usize,
    addr: SocketAddr,
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
}

impl Proxy {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        a
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Remove(self.token));
        let _ = self.waker.wake();
    }
}

fn accept_loop(mut poll: Poll, rx: Receiver<Cmd>) {
    let mut listeners: HashMap<usize, (TcpListener, SocketAddr)> = HashMap::new();
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "proxy: poll failed; host processes no longer reach published ports");
            return;
        }
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let Some((l, target)) = listeners.get(&ev.token().0) else {
                continue;
            };
            loop {
                match l.accept() {
                    Ok((c, _)) => {
                        let target = *target;
                        // Accepted sockets do not inherit O_NONBLOCK.
                        let _ = std::thread::Builder::new()
                            .name("vswitch-relay".into())
                            .spawn(move || relay(c, target));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "proxy: accept failed");
                        break;
                    }
                }
            }
        }
        // Commands after events: a removed listener's events of this round
        // are served before it goes.
        loop {
            match rx.try_recv() {
                Ok(Cmd::Add(token, l, target)) => {
                    let fd = l.as_raw_fd();
                    if let Err(e) = poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(token),
                        Interest::READABLE,
                    ) {
                        tracing::warn!(error = %e, "proxy: cannot watch a listener");
                        continue;
                    }
                    listeners.insert(token, (l, target));
                }
                Ok(Cmd::Remove(token)) => {
                    if let Some((l, _)) = listeners.remove(&token) {
                        let fd = l.as_raw_fd();
                        let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    }
                }
                Err(crossbeam::channel::TryRecvError::Empty) => break,
                Err(crossbeam::channel::TryRecvError::Disconnected) => return,
            }
        }
    }
}

fn relay(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(client, s2));
    pipe(server, c2);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Connections to a proxy reach the target and carry data both ways;
    /// a dropped proxy no longer listens; many listeners share one thread.
    #[test]
    fn relays_and_closes() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let taddr = target.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in target.incoming() {
                let mut c = c.unwrap();
                let mut b = [0u8; 5];
                c.read_exact(&mut b).unwrap();
                c.write_all(&b.map(|x| x.to_ascii_uppercase())).unwrap();
            }
        });
        let px = Proxies::new().unwrap();
        let many: Vec<Proxy> = (0..200)
            .map(|_| px.start("127.0.0.1:0".parse().unwrap(), taddr).unwrap())
            .collect();
        for p in [&many[0], &many[199]] {
            let mut c = TcpStream::connect(p.addr()).unwrap();
            c.write_all(b"hello").unwrap();
            let mut b = [0u8; 5];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"HELLO");
        }
        let gone = many[7].addr();
        drop(many);
        // The listener is closed by the proxy thread shortly after.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(gone).is_err() {
                refused = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(refused, "a dropped proxy still accepts");
        // A busy port is refused with what to do.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = px.start(held.local_addr().unwrap(), taddr).unwrap_err();
        assert!(e.contains("pick another --host-port"), "{e}");
    }
}
