//! The embedded backend: one thread, one UDP socket, SWIM membership with
//! foca, deltas pushed at once and periodic anti-entropy.
//!
//! The thread sleeps in `mio` until a datagram, a command from the control
//! thread (through a channel and a `Waker`) or the next timer. Everything it
//! learns becomes a [`View`] handed to the control thread's callback; it
//! never touches the data plane itself.
use crate::table::{Applied, Store};
use crate::wire::{self, Kind, SyncMsg};
use crate::{ClusterConfig, Cmd, MemberInfo, Stats, Status, View};
use crossbeam::channel::Receiver;
use foca::{AccumulatingRuntime, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SOCK: Token = Token(0);
/// Token of the waker.
pub(crate) const WAKE: Token = Token(1);
/// Entries per delta piece: a piece stays under a 1500-byte MTU.
const PIECE: usize = 40;
/// How often seeds that are not members are announced to.
const SEED_RETRY: Duration = Duration::from_secs(2);
/// Remote rows of a host gone this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A cluster member as foca knows it. A restart is a new `epoch`; a rejoin
/// after being declared down (same run) is a new `bump`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Node {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Host name (unique in the cluster).
    pub name: String,
    /// Run of the switch.
    pub epoch: u64,
    /// Rejoins within the run.
    pub bump: u32,
}

impl Identity for Node {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.epoch, self.bump) > (adversary.epoch, adversary.bump)
    }
}

impl Node {
    /// An identity to announce to when only the address is known.
    fn seed(addr: SocketAddr) -> Self {
        Self {
            addr,
            name: String::new(),
            epoch: 0,
            bump: 0,
        }
    }
}

type Swim = Foca<Node, PostcardCodec, StdRng, foca::NoCustomBroadcast>;

pub(crate) struct Agent {
    cfg: ClusterConfig,
    key: wire::Key,
    foca: Swim,
    rt: AccumulatingRuntime<Node>,
    sock: UdpSocket,
    poll: Poll,
    cmds: Receiver<Cmd>,
    on_view: Box<dyn FnMut(View) + Send>,
    stats: Arc<Stats>,
    store: Store,
    /// Alive members by name.
    alive: HashMap<String, Node>,
    heard: HashMap<SocketAddr, Instant>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: HashMap<u64, Timer<Node>>,
    timer_seq: u64,
    next_ae: Instant,
    next_seed: Instant,
    next_expire: Instant,
    gap_asked: HashMap<SocketAddr, Instant>,
    rng: StdRng,
    /// Set while foca handles one of our own suspicion timers: a member it
    /// declares down then is our own finding, which we tell everyone.
    own_suspicion: bool,
    dirty: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// Binds the socket and sets the agent up (errors reach `vswitch run`).
pub(crate) fn agent(
    cfg: ClusterConfig,
    cmds: Receiver<Cmd>,
    on_view: Box<dyn FnMut(View) + Send>,
    stats: Arc<Stats>,
) -> Result<(Agent, Arc<Waker>), String> {
    let key = wire::Key::new(&cfg.key)?;
    let poll = Poll::new().map_err(|e| format!("cluster poll: {e}"))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| format!("waker: {e}"))?);
    let mut sock = UdpSocket::bind(cfg.listen)
        .map_err(|e| format!("cluster listen on {}: {e}", cfg.listen))?;
    poll.registry()
        .register(&mut sock, SOCK, Interest::READABLE)
        .map_err(|e| format!("cluster socket: {e}"))?;
    let now = Instant::now();
    let me = Node {
        addr: cfg.advertise,
        name: cfg.name.clone(),
        epoch: cfg.epoch,
        bump: 0,
    };
    let mut fc = foca::Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    fc.probe_period = cfg.probe_period;
    fc.probe_rtt = cfg.probe_rtt;
    fc.suspect_to_down_after = cfg.suspect_to_down;
    fc.remove_down_after = Some(Duration::from_secs(120));
    fc.max_packet_size = NonZeroUsize::new(1400).unwrap_or(NonZeroUsize::MIN);
    fc.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::MIN,
    });
    fc.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    let rng: StdRng = rand::make_rng();
    let foca = Foca::new(me, fc, rng, PostcardCodec);
    let store = Store::new(&cfg.name, cfg.epoch, cfg.tombstone_ttl, now);
    Ok((
        Agent {
            key,
            foca,
            rt: AccumulatingRuntime::new(),
            sock,
            poll,
            cmds,
            on_view,
            stats,
            store,
            alive: HashMap::new(),
            heard: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            timer_seq: 0,
            next_ae: now + cfg.anti_entropy,
            next_seed: now,
            next_expire: now + Duration::from_secs(1),
            gap_asked: HashMap::new(),
            rng: rand::make_rng(),
            own_suspicion: false,
            dirty: false,
            buf: vec![0; 65_536],
            out: Vec::with_capacity(2048),
            cfg,
        },
        waker,
    ))
}

impl Agent {
    /// The thread body.
    pub(crate) fn run(mut self) {
        tracing::info!(name = %self.cfg.name, listen = %self.cfg.listen, epoch = self.cfg.epoch, "cluster agent up");
        let mut events = Events::with_capacity(16);
        loop {
            let now = Instant::now();
            let deadline = [
                self.timers.peek().map(|Reverse((t, _))| *t),
                Some(self.next_ae),
                Some(self.next_seed),
                Some(self.next_expire),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
            let timeout = deadline.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "cluster poll; agent stops");
                    return;
                }
            }
            self.receive();
            if !self.commands() {
                self.leave();
                return;
            }
            self.fire_timers();
            self.periodic();
            if self.dirty {
                self.dirty = false;
                let v = self.view();
                (self.on_view)(v);
            }
        }
    }

    fn keep(alive: &HashMap<String, Node>, host: &str, epoch: u64) -> bool {
        alive.get(host).is_some_and(|n| n.epoch == epoch)
    }

    fn view(&self) -> View {
        View {
            hosts: self.store.view(|h, e| Self::keep(&self.alive, h, e)),
        }
    }

    fn receive(&mut self) {
        loop {
            let (n, src) = match self.sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster recv");
                    return;
                }
            };
            self.stats.rx_packets.fetch_add(1, Relaxed);
            self.stats.rx_bytes.fetch_add(n as u64, Relaxed);
            let dgram = std::mem::take(&mut self.buf);
            self.datagram(&dgram[..n], src);
            self.buf = dgram;
        }
    }

    fn datagram(&mut self, dgram: &[u8], src: SocketAddr) {
        let (kind, body) = match self.key.open(dgram) {
            Ok(x) => x,
            Err(wire::WireError::BadTag) => {
                self.stats.rx_bad_auth.fetch_add(1, Relaxed);
                tracing::debug!(%src, "cluster datagram with a bad tag dropped");
                return;
            }
            Err(wire::WireError::Malformed) => {
                self.stats.rx_malformed.fetch_add(1, Relaxed);
                return;
            }
        };
        self.heard.insert(src, Instant::now());
        match kind {
            Kind::Swim => {
                if let Err(e) = self.foca.handle_data(body, &mut self.rt) {
                    self.stats.rx_malformed.fetch_add(1, Relaxed);
                    tracing::debug!(%src, error = %e, "SWIM message refused");
                }
                self.after_foca();
            }
            Kind::Sync => match postcard::from_bytes::<SyncMsg>(body) {
                Ok(m) => self.sync(m, src),
                Err(_) => {
                    self.stats.rx_malformed.fetch_add(1, Relaxed);
                }
            },
        }
    }

    fn sync(&mut self, m: SyncMsg, src: SocketAddr) {
        match m {
            SyncMsg::Digest { items, reply } => {
                let alive = &self.alive;
                let (deltas, more) =
                    self.store
                        .answer(&items, |h, e| Self::keep(alive, h, e), PIECE);
                for d in deltas {
                    self.send_sync(src, &SyncMsg::Delta(d));
                }
                if reply && more {
                    self.send_digest(src, false);
                }
            }
            SyncMsg::Delta(d) => {
                let now = Instant::now();
                match self.store.apply(&d, now) {
                    Applied::Ok(changed) => {
                        self.stats.deltas_applied.fetch_add(1, Relaxed);
                        if changed && Self::keep(&self.alive, &d.host, d.epoch) {
                            self.dirty = true;
                        }
                    }
                    Applied::Gap => {
                        self.stats.rx_gaps.fetch_add(1, Relaxed);
                        self.dirty = true;
                        let last = self.gap_asked.get(&src).copied();
                        if last.is_none_or(|t| now.duration_since(t) > Duration::from_millis(50)) {
                            self.gap_asked.insert(src, now);
                            self.send_digest(src, false);
                        }
                    }
                    Applied::Stale => {
                        self.stats.rx_stale.fetch_add(1, Relaxed);
                    }
                    Applied::Own => {}
                }
            }
            SyncMsg::Down(node) => {
                self.stats.down_notices.fetch_add(1, Relaxed);
                // The same statement foca would piggyback, from a member
                // that holds the key; about ourselves, foca rejoins.
                let update = foca::Member::down(node);
                if let Err(e) = self
                    .foca
                    .apply_many(std::iter::once(update), true, &mut self.rt)
                {
                    tracing::debug!(%src, error = %e, "failure notice refused");
                }
                self.after_foca();
            }
        }
    }

    fn commands(&mut self) -> bool {
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                Cmd::SetLocal(rows) => {
                    if let Some(before) = self.store.set_local(&rows, Instant::now()) {
                        let deltas = self.store.local_delta(before, PIECE);
                        let to: Vec<SocketAddr> = self.alive.values().map(|n| n.addr).collect();
                        for d in deltas {
                            let msg = SyncMsg::Delta(d);
                            for a in &to {
                                self.send_sync(*a, &msg);
                            }
                        }
                    }
                }
                Cmd::Status(reply) => {
                    let _ = reply.send(self.status());
                }
                Cmd::Stop => return false,
            }
        }
        true
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let me = MemberInfo {
            name: self.cfg.name.clone(),
            addr: self.cfg.advertise,
            state: "self".into(),
            epoch: self.cfg.epoch,
            last_heard_ms: None,
            seq: self.store.local().seq,
            entries: self.store.local().live().count(),
        };
        let mut members: Vec<MemberInfo> = self
            .foca
            .iter_membership_state()
            .map(|m| {
                let id = m.id();
                let rows = self.store.host(&id.name).filter(|r| r.epoch == id.epoch);
                MemberInfo {
                    name: id.name.clone(),
                    addr: id.addr,
                    state: match m.state() {
                        foca::State::Alive => "alive",
                        foca::State::Suspect => "suspect",
                        foca::State::Down => "down",
                    }
                    .into(),
                    epoch: id.epoch,
                    last_heard_ms: self
                        .heard
                        .get(&id.addr)
                        .map(|t| now.duration_since(*t).as_millis() as u64),
                    seq: rows.map_or(0, |r| r.seq),
                    entries: rows.map_or(0, |r| r.live().count()),
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            me,
            members,
            stats: self.stats.snapshot(),
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(ev) = self.timer_events.remove(&id) {
                self.own_suspicion = matches!(ev, Timer::ChangeSuspectToDown { .. });
                if let Err(e) = self.foca.handle_timer(ev, &mut self.rt) {
                    tracing::debug!(error = %e, "SWIM timer");
                }
                self.after_foca();
                self.own_suspicion = false;
            }
        }
    }

    fn periodic(&mut self) {
        let now = Instant::now();
        if now >= self.next_ae {
            self.next_ae = now + self.cfg.anti_entropy;
            let addrs: Vec<SocketAddr> = self.alive.values().map(|n| n.addr).collect();
            if !addrs.is_empty() {
                let i = self.rng.random_range(0..addrs.len());
                self.send_digest(addrs[i], true);
            }
        }
        if now >= self.next_seed {
            self.next_seed = now + SEED_RETRY;
            for s in self.cfg.join.clone() {
                if s == self.cfg.advertise || self.alive.values().any(|n| n.addr == s) {
                    continue;
                }
                if let Err(e) = self.foca.announce(Node::seed(s), &mut self.rt) {
                    tracing::debug!(error = %e, seed = %s, "announce");
                }
                self.after_foca();
            }
        }
        if now >= self.next_expire {
            self.next_expire = now + Duration::from_secs(1);
            self.store.expire(now);
            let gone: Vec<String> = self
                .store
                .hosts()
                .filter(|(h, r)| {
                    !self.alive.contains_key(*h) && now.duration_since(r.heard) > FORGET_AFTER
                })
                .map(|(h, _)| h.clone())
                .collect();
            for h in gone {
                self.store.forget(&h);
            }
            self.gap_asked.clear();
        }
    }

    /// Sends what foca produced, schedules its timers and follows its
    /// membership changes.
    fn after_foca(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            self.send(to.addr, Kind::Swim, &data);
        }
        let now = Instant::now();
        while let Some((after, ev)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers.push(Reverse((now + after, self.timer_seq)));
            self.timer_events.insert(self.timer_seq, ev);
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(member = %m.name, addr = %m.addr, epoch = m.epoch, "cluster member up");
                    self.alive.insert(m.name.clone(), m.clone());
                    self.dirty = true;
                    // Give it everything at once rather than at the next
                    // anti-entropy round, and ask for its rows.
                    for d in self.store.local_delta(0, PIECE) {
                        self.send_sync(m.addr, &SyncMsg::Delta(d));
                    }
                    self.send_digest(m.addr, true);
                }
                OwnedNotification::MemberDown(m) => {
                    tracing::warn!(member = %m.name, addr = %m.addr, "cluster member down; its entries are withdrawn");
                    if self.alive.get(&m.name) == Some(&m) {
                        self.alive.remove(&m.name);
                        self.dirty = true;
                    }
                    if self.own_suspicion {
                        let msg = SyncMsg::Down(m);
                        let to: Vec<SocketAddr> = self.alive.values().map(|n| n.addr).collect();
                        for a in to {
                            self.send_sync(a, &msg);
                        }
                    }
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(member = %new.name, old_epoch = old.epoch, epoch = new.epoch, "cluster member renamed");
                    if self.alive.get(&old.name) == Some(&old) {
                        self.alive.insert(new.name.clone(), new);
                        self.dirty = true;
                    }
                }
                OwnedNotification::Rejoin(me) => {
                    tracing::warn!(bump = me.bump, "declared down by the cluster; rejoined");
                }
                OwnedNotification::Defunct => {
                    tracing::warn!("declared down by the cluster");
                }
                OwnedNotification::Active => tracing::info!("joined the cluster"),
                OwnedNotification::Idle => tracing::info!("no other cluster member is alive"),
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
    }

    fn send_digest(&mut self, to: SocketAddr, reply: bool) {
        let alive = &self.alive;
        let items = self.store.digest(|h, e| Self::keep(alive, h, e));
        self.send_sync(to, &SyncMsg::Digest { items, reply });
    }

    fn send_sync(&mut self, to: SocketAddr, m: &SyncMsg) {
        match postcard::to_allocvec(m) {
            Ok(body) => self.send(to, Kind::Sync, &body),
            Err(e) => tracing::warn!(error = %e, "encode sync message"),
        }
    }

    fn send(&mut self, to: SocketAddr, kind: Kind, body: &[u8]) {
        let mut out = std::mem::take(&mut self.out);
        self.key.seal(kind, body, &mut out);
        match self.sock.send_to(&out, to) {
            Ok(n) => {
                self.stats.tx_packets.fetch_add(1, Relaxed);
                self.stats.tx_bytes.fetch_add(n as u64, Relaxed);
            }
            Err(e) => {
                self.stats.tx_errors.fetch_add(1, Relaxed);
                tracing::debug!(%to, error = %e, "cluster send");
            }
        }
        self.out = out;
    }

    fn leave(&mut self) {
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "leave cluster");
        }
        while let Some((to, data)) = self.rt.to_send() {
            self.send(to.addr, Kind::Swim, &data);
        }
        tracing::info!("left the cluster");
    }
}
