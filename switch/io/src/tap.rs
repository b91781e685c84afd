//! TAP ports with virtio-net headers: TSO segments and checksum-partial
//! frames cross the switch whole.
use crate::IoError;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use vswitch_engine::packet::{Packet, PacketPool};
use vswitch_engine::port::{Port, PortCaps, PortError, TxResult};
use vswitch_engine::stats::{BatchDrops, DropReason};
use vswitch_engine::wire::virtio::{self, VNET_HDR_LEN};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A port that exchanges frames prefixed with a virtio-net header over one
/// file descriptor: a TAP device, or an AF_PACKET socket with
/// `PACKET_VNET_HDR` on an existing interface (the uplink).
#[derive(Debug)]
pub struct VnetPort {
    name: String,
    fd: OwnedFd,
    bad_hdr: u32,
    /// AF_PACKET: the kernel counts what it dropped for a full socket buffer.
    packet: bool,
    /// AF_PACKET: calls of `take_drops` and `idle` so far (see `tick_stats`).
    calls: u32,
    kernel_drops: u32,
    /// AF_PACKET: receive buffers kept between `recvmmsg` calls.
    rx_spare: Vec<Packet>,
    /// AF_PACKET: frames of the `sendmmsg` in progress, with their lengths.
    tx_ready: Vec<(Packet, usize)>,
}

/// A TAP device opened by the switch.
pub type TapPort = VnetPort;

impl VnetPort {
    /// Creates (or attaches to) TAP `name` in the calling thread's network
    /// namespace, with virtio-net headers and TSO/checksum offloads on.
    pub fn open(name: &str) -> Result<Self, IoError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(IoError::NoInterface(name.to_string()));
        }
        let path = CString::new("/dev/net/tun").expect("static path has no NUL");
        // SAFETY: `path` is a valid NUL-terminated string; open(2) has no other
        // memory effects. The returned fd is checked before use.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(IoError::last(
                "open /dev/net/tun (is the tun module loaded?)",
            ));
        }
        // SAFETY: `raw` is a fresh fd we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has its
        // layout (name, flags, padding to 40 bytes) and outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(IoError::last(format!("TUNSETIFF {name}")));
        }
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes an unsigned int by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(IoError::last(format!("TUNSETOFFLOAD {name}")));
        }
        Ok(Self {
            name: name.to_string(),
            fd,
            bad_hdr: 0,
            packet: false,
            calls: 0,
            kernel_drops: 0,
            rx_spare: Vec::new(),
            tx_ready: Vec::new(),
        })
    }
}

impl VnetPort {
    /// Makes the TAP outlive this process (`on`), or go with its last fd
    /// (`!on`): a persistent TAP keeps its namespace, addresses and routes
    /// when the switch dies, and a new switch attaches to it by name with
    /// [`VnetPort::open`] in the namespace it is in.
    pub fn set_persist(&self, on: bool) -> Result<(), IoError> {
        // SAFETY: TUNSETPERSIST takes an int flag by value.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) } < 0 {
            return Err(IoError::last(format!("TUNSETPERSIST {}", self.name)));
        }
        Ok(())
    }
}

/// Counts a frame the kernel refused to send.
fn tx_error(r: &mut TxResult, e: i32) {
    match e {
        libc::EAGAIN | libc::ENOBUFS => r.full += 1,
        // The container has not brought its interface up (yet).
        libc::EIO | libc::ENETDOWN | libc::ENXIO => r.down += 1,
        _ => r.errors += 1,
    }
}

/// Frames per `recvmmsg`/`sendmmsg` call on an AF_PACKET port.
const MMSG: usize = 32;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl VnetPort {
    /// An AF_PACKET socket on existing interface `iface` (in the calling
    /// thread's namespace) with virtio-net headers: large TCP segments and
    /// checksum-partial frames cross whole, as on a TAP. It receives a *copy*
    /// of each frame the interface receives (the kernel still processes the
    /// original) and sends frames out of the interface.
    pub fn open_packet(iface: &str) -> Result<Self, IoError> {
        let ifindex = crate::ifindex(iface)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        if raw < 0 {
            return Err(IoError::last("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh fd we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let set = |level: libc::c_int, opt: libc::c_int, v: libc::c_int, what: &str| {
            // SAFETY: `v` is a live c_int and we pass its exact size.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                Err(IoError::last(format!("setsockopt {what} on {iface}")))
            } else {
                Ok(())
            }
        };
        set(
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            1,
            "PACKET_VNET_HDR",
        )?;
        set(
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        )?;
        // Deep enough for bursts of 64 KiB segments; best effort.
        let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20, "SO_RCVBUF");
        let _ = set(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20, "SO_SNDBUF");
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its exact size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(IoError::last(format!("bind AF_PACKET to {iface}")));
        }
        Ok(Self {
            name: iface.to_string(),
            fd,
            bad_hdr: 0,
            packet: true,
            calls: 0,
            kernel_drops: 0,
            rx_spare: Vec::new(),
            tx_ready: Vec::new(),
        })
    }

    /// Takes a received frame (virtio-net header first) into `out`; a
    /// malformed header is counted and the frame dropped. Returns 1 if taken.
    fn accept(&mut self, mut p: Packet, pool: &mut PacketPool, out: &mut Vec<Packet>) -> usize {
        match virtio::parse(p.data()) {
            Ok(o) if p.pull_front(VNET_HDR_LEN).is_some() => {
                p.meta.offload = o;
                out.push(p);
                1
            }
            _ => {
                // Malformed header: nothing sane to forward.
                self.bad_hdr += 1;
                pool.put(p);
                0
            }
        }
    }

    /// What a failed receive means: nothing more for now (`Ok`), or an error.
    fn rx_error(&self, e: i32) -> Result<(), PortError> {
        match e {
            libc::EAGAIN | libc::EINTR | libc::ENETDOWN => Ok(()),
            libc::EBADFD | libc::ENODEV | libc::ENXIO => Err(PortError::Gone(self.name.clone())),
            e => Err(PortError::Io(std::io::Error::from_raw_os_error(e))),
        }
    }

    /// AF_PACKET receive: up to `max` frames (at most [`MMSG`]) in one
    /// `recvmmsg(2)`.
    fn rx_mmsg(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        let want = max.min(MMSG);
        if want == 0 {
            return Ok(0);
        }
        let mut pkts = std::mem::take(&mut self.rx_spare);
        while pkts.len() < want {
            pkts.push(pool.get_large());
        }
        // SAFETY: iovec and mmsghdr are plain old data; all-zero is valid.
        let mut iov: [libc::iovec; MMSG] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; MMSG] = unsafe { std::mem::zeroed() };
        for (i, p) in pkts.iter_mut().take(want).enumerate() {
            let buf = p.rx_space();
            iov[i].iov_base = buf.as_mut_ptr().cast();
            iov[i].iov_len = buf.len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..want]` point at `iov[..want]`, which point at the
        // receive space of `pkts`; all of them live, unmoved, across the
        // call, and the kernel writes at most `iov_len` bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                want as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.rx_spare = pkts;
            return self.rx_error(errno()).map(|()| 0);
        }
        let got = (r as usize).min(want);
        let mut n = 0;
        // The unused buffers stay for the next call.
        for (i, mut p) in pkts.drain(..got).enumerate() {
            p.set_len(msgs[i].msg_len as usize);
            n += self.accept(p, pool, out);
        }
        self.rx_spare = pkts;
        Ok(n)
    }

    /// AF_PACKET send: the whole burst in `sendmmsg(2)` calls of up to
    /// [`MMSG`] frames; a frame the kernel refuses is counted and skipped.
    fn tx_mmsg(&mut self, pkts: &mut Vec<Packet>, pool: &mut PacketPool) -> TxResult {
        let mut r = TxResult::default();
        let mut ready = std::mem::take(&mut self.tx_ready);
        let mut drain = pkts.drain(..).peekable();
        while drain.peek().is_some() {
            ready.clear();
            for mut p in drain.by_ref().take(MMSG) {
                let len = p.len();
                let o = p.meta.offload;
                match p.push_front(VNET_HDR_LEN) {
                    Some(h) => {
                        virtio::emit(&o, h);
                        ready.push((p, len));
                    }
                    None => {
                        r.errors += 1;
                        pool.put(p);
                    }
                }
            }
            // SAFETY: plain old data; all-zero is valid.
            let mut iov: [libc::iovec; MMSG] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msgs: [libc::mmsghdr; MMSG] = unsafe { std::mem::zeroed() };
            for (i, (p, _)) in ready.iter().enumerate() {
                let d = p.data();
                iov[i].iov_base = d.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = d.len();
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            let mut i = 0;
            while i < ready.len() {
                // SAFETY: `msgs[i..]` point at `iov[i..]`, which point at the
                // data of `ready[i..]`; the kernel only reads them, and they
                // live, unmoved, across the call.
                let k = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        msgs.as_mut_ptr().add(i),
                        (ready.len() - i) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if k <= 0 {
                    // The frame at `i` failed; count it and go on.
                    tx_error(&mut r, errno());
                    i += 1;
                } else {
                    for (_, len) in &ready[i..i + k as usize] {
                        r.sent += 1;
                        r.bytes += *len;
                    }
                    i += k as usize;
                }
            }
            for (p, _) in ready.drain(..) {
                pool.put(p);
            }
        }
        drop(drain);
        self.tx_ready = ready;
        r
    }

    /// Counts a call; reads the kernel's drop counter every `every` calls
    /// (a system call each time).
    fn tick_stats(&mut self, every: u32) {
        self.calls = self.calls.wrapping_add(1);
        if self.calls.is_multiple_of(every) {
            self.read_packet_stats();
        }
    }

    /// Adds the kernel's drop count since the last read (reading resets it).
    fn read_packet_stats(&mut self) {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS writes a `struct tpacket_stats` of at most
        // `len` bytes into `st`, which lives across the call.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.kernel_drops = self.kernel_drops.saturating_add(st.tp_drops);
        }
    }
}

impl Port for VnetPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn caps(&self) -> PortCaps {
        PortCaps {
            csum: true,
            tso: true,
            max_frame: vswitch_engine::packet::LARGE_FRAME,
        }
    }

    fn rx_burst(
        &mut self,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
        max: usize,
    ) -> Result<usize, PortError> {
        if self.packet {
            return self.rx_mmsg(pool, out, max);
        }
        let mut n = 0;
        while n < max {
            let mut p = pool.get_large();
            let buf = p.rx_space();
            // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes
            // that lives across the call; read(2) writes at most that many.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r < 0 {
                pool.put(p);
                self.rx_error(errno())?;
                break;
            }
            p.set_len(r as usize);
            n += self.accept(p, pool, out);
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pkts: &mut Vec<Packet>, pool: &mut PacketPool) -> TxResult {
        if self.packet {
            return self.tx_mmsg(pkts, pool);
        }
        let mut r = TxResult::default();
        for mut p in pkts.drain(..) {
            let len = p.len();
            let o = p.meta.offload;
            let Some(h) = p.push_front(VNET_HDR_LEN) else {
                r.errors += 1;
                pool.put(p);
                continue;
            };
            virtio::emit(&o, h);
            let d = p.data();
            // SAFETY: `d` is a valid readable slice for the duration of the call.
            let w = unsafe { libc::write(self.fd.as_raw_fd(), d.as_ptr().cast(), d.len()) };
            if w < 0 {
                tx_error(&mut r, errno());
            } else {
                r.sent += 1;
                r.bytes += len;
            }
            pool.put(p);
        }
        r
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn take_drops(&mut self, drops: &mut BatchDrops) {
        drops.add_n(DropReason::RxError, std::mem::take(&mut self.bad_hdr));
        if self.packet {
            self.tick_stats(1024);
            drops.add_n(
                DropReason::RxRingFull,
                std::mem::take(&mut self.kernel_drops),
            );
        }
    }

    fn idle(&mut self) -> Result<(), PortError> {
        // An idle worker calls this on every empty poll: one system call in
        // 256 of them keeps the counter fresh without taxing the loop.
        if self.packet {
            self.tick_stats(256);
        }
        Ok(())
    }
}
