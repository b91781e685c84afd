//! The resolver's thread (`vswitch-dns`): one `mio` loop over a UDP socket
//! and a TCP listener on each network's gateway address, port 53, and one
//! UDP socket toward the upstream resolvers.
//!
//! A query is answered only when it comes from the network's own subnet
//! (never from the uplink's side: the switch is not an open resolver), at
//! most `[dns] rate` a second per source (bursts of `burst`), over at most
//! `tcp_per_source` TCP connections per source ([`MAX_TCP`] in all);
//! queries over [`MAX_QUERY`] bytes are dropped. Forwarded questions wait
//! [`TIMEOUT`] for an answer from each upstream in turn, then get SERVFAIL;
//! at most [`MAX_PENDING`] wait at once. Every refusal is counted
//! ([`DnsStats`]).
use super::answer::{self, Outcome, Refusal};
use super::cache::Cache;
use super::{DnsStats, NetZone};
use crate::config::DnsConfig;
use crossbeam::channel::Receiver;
use hickory_proto::op::{Message, ResponseCode};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest query taken (a query is one question: tens of bytes).
pub const MAX_QUERY: usize = 1232;
/// How long an upstream has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded questions waiting at once.
pub const MAX_PENDING: usize = 4096;
/// Questions the cache holds.
pub const CACHE_SIZE: usize = 10_000;
/// An idle TCP client is closed after this.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP clients at once, from all sources.
pub const MAX_TCP: usize = 1024;
/// How often waiting questions and idle clients are looked over.
const SWEEP: Duration = Duration::from_millis(100);
/// How often a gateway that could not be bound is tried again.
const REBIND: Duration = Duration::from_secs(2);

pub(super) const WAKE: Token = Token(usize::MAX);
const UPSTREAM: Token = Token(usize::MAX - 1);

/// What control sends the thread.
pub(super) enum Cmd {
    /// The networks now, each keyed by its gateway address.
    Zones(Vec<NetZone>),
    /// The bounds per source (`[dns]`).
    Limits(DnsConfig),
}

enum Sock {
    Udp(Ipv4Addr, UdpSocket),
    Listener(Ipv4Addr, TcpListener),
    Conn(Conn),
}

struct Conn {
    gw: Ipv4Addr,
    peer: IpAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    last: Instant,
}

/// Where an answer goes.
#[derive(Clone, Copy)]
enum To {
    Udp(Ipv4Addr, SocketAddr),
    Tcp(Token),
}

struct Pending {
    to: To,
    query: Message,
    key: super::cache::Key,
    bytes: Vec<u8>,
    upstreams: Vec<SocketAddr>,
    tried: usize,
    sent: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub(super) struct Server {
    poll: Poll,
    rx: Receiver<Cmd>,
    stats: Arc<DnsStats>,
    socks: HashMap<Token, Sock>,
    bound: HashMap<Ipv4Addr, [Token; 2]>,
    /// Gateways that could not be bound, and when that was last tried.
    unbound: HashMap<Ipv4Addr, Instant>,
    zones: HashMap<Ipv4Addr, NetZone>,
    upstream: UdpSocket,
    pending: HashMap<u16, Pending>,
    cache: Cache,
    buckets: HashMap<IpAddr, Bucket>,
    limits: DnsConfig,
    /// Open TCP clients per source.
    tcp_open: HashMap<IpAddr, u32>,
    swept: Instant,
    next: usize,
    seed: u64,
}

impl Server {
    pub(super) fn new(
        poll: Poll,
        rx: Receiver<Cmd>,
        stats: Arc<DnsStats>,
        limits: DnsConfig,
    ) -> std::io::Result<Self> {
        let mut upstream = UdpSocket::bind("0.0.0.0:0".parse().expect("an address"))?;
        poll.registry()
            .register(&mut upstream, UPSTREAM, Interest::READABLE)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            poll,
            rx,
            stats,
            socks: HashMap::new(),
            bound: HashMap::new(),
            unbound: HashMap::new(),
            zones: HashMap::new(),
            upstream,
            pending: HashMap::new(),
            cache: Cache::new(CACHE_SIZE),
            buckets: HashMap::new(),
            limits,
            tcp_open: HashMap::new(),
            swept: Instant::now(),
            next: 0,
            seed,
        })
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(200)))
            {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "resolver: poll failed; stopping");
                    return;
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {
                        if !self.commands() {
                            return;
                        }
                    }
                    UPSTREAM => self.upstream_answers(),
                    t => self.ready(t),
                }
            }
            let now = Instant::now();
            if now.saturating_duration_since(self.swept) >= SWEEP {
                self.swept = now;
                self.timeouts(now);
            }
        }
    }

    /// Takes the commands; `false` once control is gone.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Zones(z)) => self.set_zones(z),
                Ok(Cmd::Limits(l)) => self.limits = l,
                Err(crossbeam::channel::TryRecvError::Empty) => return true,
                Err(crossbeam::channel::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn token(&mut self) -> Token {
        self.next = (self.next + 1) % (usize::MAX - 2);
        Token(self.next)
    }

    fn set_zones(&mut self, zones: Vec<NetZone>) {
        let want: HashMap<Ipv4Addr, NetZone> = zones.into_iter().map(|z| (z.gw, z)).collect();
        // Sockets of gateways that are gone.
        let gone: Vec<Ipv4Addr> = self
            .bound
            .keys()
            .filter(|gw| !want.contains_key(gw))
            .copied()
            .collect();
        for gw in gone {
            if let Some(tokens) = self.bound.remove(&gw) {
                for t in tokens {
                    self.socks.remove(&t);
                }
            }
            self.close_where(|c| c.gw == gw);
        }
        self.zones = want;
        self.unbound.retain(|gw, _| self.zones.contains_key(gw));
        self.bind_all(Instant::now(), true);
    }

    /// Listens on every gateway not listened on yet; one that cannot be
    /// bound (another server holds the port) is tried again every
    /// [`REBIND`], with one warning.
    fn bind_all(&mut self, now: Instant, changed: bool) {
        let todo: Vec<(Ipv4Addr, String)> = self
            .zones
            .iter()
            .filter(|(gw, _)| !self.bound.contains_key(gw))
            .filter(|(gw, _)| {
                changed
                    || self
                        .unbound
                        .get(gw)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= REBIND)
            })
            .map(|(gw, z)| (*gw, z.network.clone()))
            .collect();
        for (gw, network) in todo {
            match self.bind(gw) {
                Ok(t) => {
                    self.bound.insert(gw, t);
                    self.unbound.remove(&gw);
                    tracing::info!(network, gateway = %gw, "resolver answers on the gateway, port 53");
                }
                Err(e) => {
                    if self.unbound.insert(gw, now).is_none() {
                        tracing::warn!(
                            network,
                            gateway = %gw,
                            error = %e,
                            "resolver: cannot listen on the gateway's port 53 (is another DNS server bound to it, or to 0.0.0.0:53?); the network's containers get no names until it is free (tried again every few seconds)"
                        );
                    }
                }
            }
        }
    }

    fn bind(&mut self, gw: Ipv4Addr) -> std::io::Result<[Token; 2]> {
        let addr = SocketAddr::new(gw.into(), 53);
        let mut u = UdpSocket::from_std(freebound(addr, Type::DGRAM)?.into());
        let l = freebound(addr, Type::STREAM)?;
        l.listen(1024)?;
        let mut l = TcpListener::from_std(l.into());
        let (tu, tl) = (self.token(), self.token());
        self.poll
            .registry()
            .register(&mut u, tu, Interest::READABLE)?;
        self.poll
            .registry()
            .register(&mut l, tl, Interest::READABLE)?;
        self.socks.insert(tu, Sock::Udp(gw, u));
        self.socks.insert(tl, Sock::Listener(gw, l));
        Ok([tu, tl])
    }

    fn ready(&mut self, t: Token) {
        match self.socks.get(&t) {
            Some(Sock::Udp(..)) => self.udp(t),
            Some(Sock::Listener(..)) => self.accept(t),
            Some(Sock::Conn(_)) => self.tcp(t),
            None => {}
        }
    }

    /// Whether `src` may ask the resolver on `gw`'s network now.
    fn admit(&mut self, gw: Ipv4Addr, src: IpAddr, now: Instant) -> bool {
        let inside = match (src, self.zones.get(&gw)) {
            (IpAddr::V4(ip), Some(z)) => z.contains(ip),
            _ => false,
        };
        if !inside {
            self.stats.refused_source.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.buckets.len() > 65_536 {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(10));
        }
        let (rate, burst) = (self.limits.rate as f64, self.limits.burst as f64);
        let b = self.buckets.entry(src).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    fn udp(&mut self, t: Token) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(Sock::Udp(gw, s)) = self.socks.get(&t) else {
                return;
            };
            let gw = *gw;
            let (n, peer) = match s.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let now = Instant::now();
            if !self.admit(gw, peer.ip(), now) {
                continue;
            }
            if n > MAX_QUERY {
                self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.query(To::Udp(gw, peer), gw, peer.ip(), &buf[..n], now);
        }
    }

    fn accept(&mut self, t: Token) {
        loop {
            let Some(Sock::Listener(gw, l)) = self.socks.get(&t) else {
                return;
            };
            let gw = *gw;
            let (mut stream, peer) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let now = Instant::now();
            if !self.admit(gw, peer.ip(), now) {
                continue;
            }
            let open = self.tcp_open.get(&peer.ip()).copied().unwrap_or(0);
            let all: u32 = self.tcp_open.values().sum();
            if open >= self.limits.tcp_per_source || all as usize >= MAX_TCP {
                // Dropping the stream closes it.
                self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let ct = self.token();
            if self
                .poll
                .registry()
                .register(&mut stream, ct, Interest::READABLE)
                .is_ok()
            {
                self.socks.insert(
                    ct,
                    Sock::Conn(Conn {
                        gw,
                        peer: peer.ip(),
                        stream,
                        buf: Vec::new(),
                        last: now,
                    }),
                );
                *self.tcp_open.entry(peer.ip()).or_insert(0) += 1;
            }
        }
    }

    fn tcp(&mut self, t: Token) {
        let mut chunk = [0u8; 4096];
        let mut close = false;
        let mut queries = Vec::new();
        let (gw, peer) = {
            let Some(Sock::Conn(c)) = self.socks.get_mut(&t) else {
                return;
            };
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
            c.last = Instant::now();
            // Length-prefixed messages (RFC 1035 4.2.2).
            while c.buf.len() >= 2 {
                let len = u16::from_be_bytes([c.buf[0], c.buf[1]]) as usize;
                if len > MAX_QUERY {
                    self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                    close = true;
                    break;
                }
                if c.buf.len() < 2 + len {
                    break;
                }
                queries.push(c.buf[2..2 + len].to_vec());
                c.buf.drain(..2 + len);
            }
            (c.gw, c.peer)
        };
        for q in queries {
            if self.admit(gw, peer, Instant::now()) {
                self.query(To::Tcp(t), gw, peer, &q, Instant::now());
            }
        }
        if close {
            self.close(t);
        }
    }

    /// Closes TCP client `t`.
    fn close(&mut self, t: Token) {
        if !matches!(self.socks.get(&t), Some(Sock::Conn(_))) {
            return;
        }
        if let Some(Sock::Conn(c)) = self.socks.remove(&t) {
            if let Some(n) = self.tcp_open.get_mut(&c.peer) {
                *n -= 1;
                if *n == 0 {
                    self.tcp_open.remove(&c.peer);
                }
            }
        }
    }

    /// Closes the TCP clients `f` picks.
    fn close_where(&mut self, f: impl Fn(&Conn) -> bool) {
        let gone: Vec<Token> = self
            .socks
            .iter()
            .filter_map(|(t, s)| matches!(s, Sock::Conn(c) if f(c)).then_some(*t))
            .collect();
        for t in gone {
            self.close(t);
        }
    }

    fn query(&mut self, to: To, gw: Ipv4Addr, src: IpAddr, bytes: &[u8], now: Instant) {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let Some(zone) = self.zones.get(&gw) else {
            return;
        };
        let also: Vec<&NetZone> = match src {
            IpAddr::V4(ip) => zone
                .also
                .get(&ip)
                .into_iter()
                .flatten()
                .filter_map(|g| self.zones.get(g))
                .collect(),
            _ => Vec::new(),
        };
        let (outcome, why) = answer::answer(zone, &also, bytes);
        match why {
            Some(Refusal::Malformed) => self.stats.malformed.fetch_add(1, Ordering::Relaxed),
            Some(Refusal::Unsupported) => self.stats.unsupported.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        match outcome {
            Outcome::Drop => {}
            Outcome::Reply(b) => {
                if why.is_none() {
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                }
                self.send(to, &b);
            }
            Outcome::Forward { query, key } => {
                let upstreams = self
                    .zones
                    .get(&gw)
                    .map(|z| z.upstreams.clone())
                    .unwrap_or_default();
                if upstreams.is_empty() {
                    return;
                }
                let key = (super::cache::upstreams_key(&upstreams), key.0, key.1);
                if let Some(mut m) = self.cache.get(&key, now) {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    m.set_id(query.id());
                    // The question as the client wrote it (case included).
                    *m.queries_mut() = query.queries().to_vec();
                    if let Ok(b) = m.to_vec() {
                        self.send(to, &b);
                    }
                    return;
                }
                if self.pending.len() >= MAX_PENDING {
                    self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                    let q = query.queries().first();
                    self.send(to, &answer::error(query.id(), ResponseCode::ServFail, q));
                    return;
                }
                let id = self.fresh_id();
                let mut out = query.clone();
                out.set_id(id);
                let Ok(bytes) = out.to_vec() else {
                    return;
                };
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                let _ = self.upstream.send_to(&bytes, upstreams[0]);
                self.pending.insert(
                    id,
                    Pending {
                        to,
                        query,
                        key,
                        bytes,
                        upstreams,
                        tried: 1,
                        sent: now,
                    },
                );
            }
        }
    }

    fn fresh_id(&mut self) -> u16 {
        loop {
            // xorshift64: ids an off-path sender cannot guess in order.
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            let id = (self.seed >> 24) as u16;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    fn upstream_answers(&mut self) {
        let mut buf = [0u8; 65_535];
        loop {
            let (n, from) = match self.upstream.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            // The answer to a question asked, from the server asked.
            let Some(p) = self.pending.get(&m.id()) else {
                continue;
            };
            let asked = p.upstreams.get(p.tried - 1) == Some(&from);
            let same_q = m
                .queries()
                .first()
                .is_some_and(|q| answer::lower(q.name()) == p.key.1 && q.query_type() == p.key.2);
            if !asked || !same_q {
                continue;
            }
            let Some(p) = self.pending.remove(&m.id()) else {
                continue;
            };
            self.cache.put(p.key.clone(), &m, Instant::now());
            let mut m = m;
            m.set_id(p.query.id());
            *m.queries_mut() = p.query.queries().to_vec();
            if let Ok(b) = m.to_vec() {
                self.send(p.to, &b);
            }
        }
    }

    fn timeouts(&mut self, now: Instant) {
        let late: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            self.stats.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
            if p.tried < p.upstreams.len() {
                let _ = self.upstream.send_to(&p.bytes, p.upstreams[p.tried]);
                p.tried += 1;
                p.sent = now;
                self.pending.insert(id, p);
            } else {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                let q = p.query.queries().first();
                let b = answer::error(p.query.id(), ResponseCode::ServFail, q);
                self.send(p.to, &b);
            }
        }
        self.close_where(|c| now.saturating_duration_since(c.last) > TCP_IDLE);
        if !self.unbound.is_empty() {
            self.bind_all(now, false);
        }
    }

    fn send(&mut self, to: To, b: &[u8]) {
        match to {
            To::Udp(gw, peer) => {
                let Some(&[tu, _]) = self.bound.get(&gw) else {
                    return;
                };
                if let Some(Sock::Udp(_, s)) = self.socks.get(&tu) {
                    let _ = s.send_to(b, peer);
                }
            }
            To::Tcp(t) => {
                let Some(Sock::Conn(c)) = self.socks.get_mut(&t) else {
                    return;
                };
                let mut framed = Vec::with_capacity(b.len() + 2);
                framed.extend_from_slice(&(b.len() as u16).to_be_bytes());
                framed.extend_from_slice(b);
                // An answer is small: the socket's buffer takes it whole,
                // or the client is not reading and is closed.
                if c.stream.write_all(&framed).is_err() {
                    self.close(t);
                }
            }
        }
    }
}

/// A nonblocking socket bound to `addr` even while the address is not on
/// any interface yet (`IP_FREEBIND`): the gateway's address comes up with
/// its port, after the network's zone; packets reach the socket as soon as
/// it does. Another server on the port still makes this fail.
fn freebound(addr: SocketAddr, ty: Type) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, None)?;
    s.set_nonblocking(true)?;
    s.set_freebind_v4(true)?;
    if ty == Type::STREAM {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}
