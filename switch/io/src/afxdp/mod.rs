//! AF_XDP ports: one socket on one queue of an interface (the host end of a
//! veth, or a NIC queue), with its own UMEM and our redirect program.
//!
//! The UMEM is split in two: frames the kernel fills with received frames
//! (kept on the fill ring) and frames the switch copies other ports' packets
//! into to transmit them (a free list, replenished from the completion ring).
//! A received frame stays where the kernel put it: the engine gets it lent as
//! a packet, with the frame's headroom in front for an outer header, and it
//! returns to the fill ring when the packet is dropped or sent. A packet sent
//! back out of the port whose frame it lives in goes on the TX ring as it is.
pub mod bpf;
mod umem;

use crate::IoError;
use bpf::XdpRedirect;
use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use umem::FrameStore;
use vswitch_engine::packet::{LentFrame, Packet, PacketPool};
use vswitch_engine::port::{Port, PortCaps, PortError, TxResult};
use vswitch_engine::stats::{BatchDrops, DropReason};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

const FRAME: u32 = 4096;
const RX_FRAMES: u32 = 1024;
const TX_FRAMES: u32 = 1024;
const TX_CHUNK: usize = 64;

/// Settings of an AF_XDP port.
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// Interface name.
    pub ifname: String,
    /// Queue id.
    pub queue: u32,
}

/// How the port ended up bound, for `port ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfXdpMode {
    /// XDP program in the driver hook (else generic/SKB).
    pub native: bool,
    /// UMEM on 2 MiB hugepages.
    pub hugepages: bool,
}

/// An AF_XDP socket as a switch port.
pub struct AfXdpPort {
    name: String,
    rx: RingRx,
    tx: RingTx,
    dq: DeviceQueue,
    _user: User,
    _sock: Socket,
    _umem: Umem,
    _xdp: XdpRedirect,
    fd: RawFd,
    free_tx: Vec<u64>,
    refill: Vec<u64>,
    idle_calls: u32,
    rx_calls: u32,
    bad_desc: u32,
    kernel_drops_seen: u64,
    kernel_drops_new: u32,
    mode: AfXdpMode,
    // Last: the store goes back to the spare list only after every ring and
    // the UMEM registration are closed.
    lease: Lease,
}

/// A port's hold on its [`FrameStore`], and how many of its frames are lent
/// to packets.
#[derive(Debug)]
struct Lease {
    store: &'static FrameStore,
    lent: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.release(self.lent);
    }
}

// SAFETY: the rings and UMEM pointers refer to the kernel's ring mappings and
// to the store, which is never unmapped; the port is used by one thread at a
// time (the worker that owns it), which `&mut self` enforces.
unsafe impl Send for AfXdpPort {}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish()
    }
}

fn errno(what: &str, e: xdpilone::Errno) -> IoError {
    IoError::errno(what, std::io::Error::from_raw_os_error(e.get_raw()))
}

impl AfXdpPort {
    /// Opens the socket, loads the redirect program and fills the fill ring.
    pub fn open(cfg: &AfXdpConfig) -> Result<Self, IoError> {
        let cname = CString::new(cfg.ifname.clone())
            .map_err(|_| IoError::NoInterface(cfg.ifname.clone()))?;
        let ifindex = nix::net::if_::if_nametoindex(cname.as_c_str())
            .map_err(|_| IoError::NoInterface(cfg.ifname.clone()))?;
        let (store, reused) = FrameStore::take((RX_FRAMES + TX_FRAMES) as usize, FRAME as usize)?;
        store.zero();
        let lease = Lease { store, lent: 0 };
        let ucfg = UmemConfig {
            fill_size: RX_FRAMES,
            complete_size: TX_FRAMES,
            frame_size: FRAME,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the store is a page-aligned mapping of the whole length
        // that is never unmapped, goes to no other port before this one has
        // closed its rings (`lease`, dropped last), and is only accessed
        // through frames the rings hand to us.
        let umem = unsafe { Umem::new(ucfg, store.as_nonnull()) }
            .map_err(|e| errno("register UMEM", e))?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex)
            .map_err(|e| errno("interface info", e))?;
        info.set_queue(cfg.queue);
        let sock = Socket::with_shared(&info, &umem).map_err(|e| errno("AF_XDP socket", e))?;
        let dq = umem
            .fq_cq(&sock)
            .map_err(|e| errno("fill/completion rings", e))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(RX_FRAMES),
                    tx_size: NonZeroU32::new(TX_FRAMES),
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| errno("rx/tx rings", e))?;
        let rx = user.map_rx().map_err(|e| errno("map rx ring", e))?;
        let tx = user.map_tx().map_err(|e| errno("map tx ring", e))?;
        umem.bind(&user).map_err(|e| {
            errno(
                &format!("bind AF_XDP socket to {} queue {}", cfg.ifname, cfg.queue),
                e,
            )
        })?;
        let fd = user.as_raw_fd();
        let xdp = XdpRedirect::attach(ifindex, cfg.queue + 1)?;
        xdp.insert(cfg.queue, fd)?;
        let mode = AfXdpMode {
            native: xdp.native,
            hugepages: store.huge(),
        };
        let mut port = Self {
            name: cfg.ifname.clone(),
            rx,
            tx,
            dq,
            _user: user,
            _sock: sock,
            _umem: umem,
            _xdp: xdp,
            fd,
            free_tx: (RX_FRAMES..RX_FRAMES + TX_FRAMES)
                .map(|i| i as u64 * FRAME as u64)
                .collect(),
            refill: (0..RX_FRAMES).map(|i| i as u64 * FRAME as u64).collect(),
            idle_calls: 0,
            rx_calls: 0,
            bad_desc: 0,
            kernel_drops_seen: 0,
            kernel_drops_new: 0,
            mode,
            lease,
        };
        port.fill();
        tracing::info!(port = %port.name, native = mode.native, hugepages = mode.hugepages, reused, "AF_XDP port up");
        Ok(port)
    }

    /// How the port is bound.
    pub fn mode(&self) -> AfXdpMode {
        self.mode
    }

    /// Puts frames back on the fill ring; the ring may take fewer than
    /// offered, the rest wait for the next call.
    fn fill(&mut self) {
        while let Some(addr) = self.lease.store.pop_returned() {
            self.lease.lent -= 1;
            self.refill.push(addr);
        }
        if self.refill.is_empty() {
            return;
        }
        let mut w = self.dq.fill(self.refill.len() as u32);
        let n = w.insert(self.refill.iter().copied()) as usize;
        w.commit();
        drop(w);
        self.refill.drain(..n);
    }

    fn reclaim(&mut self) {
        let mut c = self.dq.complete(TX_FRAMES);
        while let Some(addr) = c.read() {
            recycle(&mut self.refill, &mut self.free_tx, addr);
        }
        c.release();
    }

    /// Puts `descs` on the TX ring and kicks the kernel. The ring may take
    /// fewer than offered: kick, reclaim completions and offer the rest again,
    /// a bounded number of times; what still does not fit is counted full.
    fn push_tx(&mut self, descs: &[XdpDesc], res: &mut TxResult) {
        let mut done = 0;
        for _ in 0..64 {
            if done == descs.len() {
                break;
            }
            let mut w = self.tx.transmit((descs.len() - done) as u32);
            let k = w.insert(descs[done..].iter().copied()) as usize;
            w.commit();
            drop(w);
            done += k;
            self.flush_tx();
            if done < descs.len() {
                self.reclaim();
            }
        }
        for d in &descs[..done] {
            res.sent += 1;
            res.bytes += d.len as usize;
        }
        for d in &descs[done..] {
            recycle(&mut self.refill, &mut self.free_tx, d.addr);
            res.full += 1;
        }
    }

    /// Reads the socket's kernel drop counters (a getsockopt: not per burst).
    fn poll_kernel_drops(&mut self) {
        if let Ok(st) = self._user.statistics_v2() {
            let total = st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs;
            let new = total.saturating_sub(self.kernel_drops_seen);
            self.kernel_drops_seen = total;
            self.kernel_drops_new = self
                .kernel_drops_new
                .saturating_add(new.min(u32::MAX as u64) as u32);
        }
    }

    fn kick(&self) {
        // Copy mode transmits only inside sendto(); zero-copy drivers ask for
        // it only when they set the need-wakeup flag.
        self.tx.wake();
    }

    /// Kicks until the kernel has taken every descriptor: in copy mode one
    /// sendto() transmits at most 32 frames, and whatever stays in the ring
    /// would otherwise wait for the next burst to this port (a TCP flow
    /// waiting for those very frames would stall until its retransmit timer).
    fn flush_tx(&self) {
        for _ in 0..TX_FRAMES / 32 + 1 {
            if self.tx.pending() == 0 {
                return;
            }
            self.kick();
        }
    }
}

/// A frame the kernel is done with (or never took) goes back where it
/// belongs: a received frame that was sent back out to the fill ring
/// (`refill`), a copy frame to the free list.
fn recycle(refill: &mut Vec<u64>, free_tx: &mut Vec<u64>, addr: u64) {
    let chunk = addr & !(FRAME as u64 - 1);
    if chunk < RX_FRAMES as u64 * FRAME as u64 {
        refill.push(chunk);
    } else {
        free_tx.push(chunk);
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        PortCaps {
            csum: false,
            tso: false,
            max_frame: FRAME as usize,
        }
    }

    fn rx_burst(
        &mut self,
        _pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut n = 0;
        let mut r = self.rx.receive(max as u32);
        let store = self.lease.store;
        while let Some(XdpDesc { addr, len, .. }) = r.read() {
            let head = (addr & (FRAME as u64 - 1)) as usize;
            match store.frame(addr) {
                Some(frame) if head + len as usize <= frame.len() => {
                    out.push(Packet::lent(
                        LentFrame::new(frame, store),
                        head,
                        len as usize,
                    ));
                    self.lease.lent += 1;
                    n += 1;
                }
                _ => {
                    self.bad_desc += 1;
                    self.refill.push(addr & !(FRAME as u64 - 1));
                }
            }
        }
        r.release();
        drop(r);
        self.fill();
        self.rx_calls = self.rx_calls.wrapping_add(1);
        if self.rx_calls.is_multiple_of(4096) {
            self.poll_kernel_drops();
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Packet>, pool: &mut PacketPool) -> TxResult {
        let mut res = TxResult::default();
        let mut descs = [XdpDesc::default(); TX_CHUNK];
        let mut queued = 0;
        for mut p in pkts.drain(..) {
            // One of our own received frames: it goes out as it is.
            if let Some((frame, head, len)) = p.take_lent_from(self.lease.store) {
                self.lease.lent -= 1;
                descs[queued] = XdpDesc {
                    addr: self.lease.store.addr_of(frame) + head as u64,
                    len: len as u32,
                    options: 0,
                };
                queued += 1;
                if queued == TX_CHUNK {
                    self.push_tx(&descs, &mut res);
                    queued = 0;
                }
                continue;
            }
            if self.free_tx.is_empty() {
                // Flush what is queued so completions can come back.
                self.push_tx(&descs[..queued], &mut res);
                queued = 0;
                self.reclaim();
            }
            let Some(addr) = self.free_tx.pop() else {
                res.full += 1;
                pool.put(p);
                continue;
            };
            let len = p.len();
            match self.lease.store.frame(addr) {
                Some(dst) if len <= dst.len() => {
                    dst[..len].copy_from_slice(p.data());
                    descs[queued] = XdpDesc {
                        addr,
                        len: len as u32,
                        options: 0,
                    };
                    queued += 1;
                }
                _ => {
                    self.free_tx.push(addr);
                    res.errors += 1;
                }
            }
            pool.put(p);
            if queued == TX_CHUNK {
                self.push_tx(&descs, &mut res);
                queued = 0;
            }
        }
        self.push_tx(&descs[..queued], &mut res);
        res
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: `self.fd` is the socket owned by `self._user`, valid for as
        // long as `self` and thus for the returned borrow.
        Some(unsafe { BorrowedFd::borrow_raw(self.fd) })
    }

    fn take_drops(&mut self, drops: &mut BatchDrops) {
        drops.add_n(DropReason::RxError, std::mem::take(&mut self.bad_desc));
        drops.add_n(
            DropReason::RxRingFull,
            std::mem::take(&mut self.kernel_drops_new),
        );
    }

    fn idle(&mut self) -> Result<(), PortError> {
        self.flush_tx();
        self.reclaim();
        self.fill();
        self.idle_calls = self.idle_calls.wrapping_add(1);
        if self.idle_calls.is_multiple_of(256) {
            self.poll_kernel_drops();
            // The kernel reports an unregistered interface as a socket error.
            let Some(fd) = self.wait_fd() else {
                return Ok(());
            };
            if let Ok(e) = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SocketError)
            {
                if e == libc::ENETDOWN || e == libc::ENODEV || e == libc::ENXIO {
                    return Err(PortError::Gone(self.name.clone()));
                }
            }
        }
        Ok(())
    }
}
