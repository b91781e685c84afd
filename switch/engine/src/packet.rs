//! Frames with headroom, and the per-worker pool they come from.
//!
//! A [`Packet`] owns its buffer, so moving it between stages, ports or workers
//! never copies the frame. Headroom in front of the frame lets encapsulation
//! (VXLAN, virtio-net headers) prepend bytes by moving the start offset.
//!
//! The buffer is either the switch's own memory (a `Vec`, from a
//! [`PacketPool`]) or a frame lent by a port ([`LentFrame`]): an AF_XDP port
//! hands the engine its UMEM frame as received, headroom and all, and gets it
//! back when the packet is transmitted from it or dropped.
use crate::port::PortId;
use crate::wire::virtio::Offload;

/// Bytes reserved in front of every frame.
pub const HEADROOM: usize = 128;
/// Largest frame a small buffer holds (jumbo frames up to 9216 bytes).
pub const SMALL_FRAME: usize = 9216 + 64;
/// Largest frame a large buffer holds: a 64 KiB TSO segment plus its headers.
pub const LARGE_FRAME: usize = 65535 + 256;

/// What the pipeline knows about a frame besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meta {
    /// The port the frame came in on.
    pub in_port: PortId,
    /// Checksum and segmentation work the sender left to the switch (TAP ports).
    pub offload: Offload,
}

/// Memory that lends frames to packets: an AF_XDP port's UMEM. Whoever holds
/// a packet may drop it on any thread; the frame then comes back through
/// [`FrameOwner::give_back`]. Owners live for the whole process (they recycle
/// their memory, never unmap it), so a frame can never outlive its memory.
pub trait FrameOwner: Send + Sync + std::fmt::Debug {
    /// `frame`, lent before, is free again.
    fn give_back(&self, frame: &'static mut [u8]);
}

/// A frame of a [`FrameOwner`]'s memory, lent to one packet.
#[derive(Debug)]
pub struct LentFrame {
    bytes: &'static mut [u8],
    /// `None` once the frame is handed on without coming back here.
    owner: Option<&'static dyn FrameOwner>,
}

impl LentFrame {
    /// Lends `bytes`, one frame of `owner`'s memory; it goes back to `owner`
    /// when dropped.
    pub fn new(bytes: &'static mut [u8], owner: &'static dyn FrameOwner) -> Self {
        Self {
            bytes,
            owner: Some(owner),
        }
    }

    /// Whether `owner` lent this frame.
    fn is_from(&self, owner: &dyn FrameOwner) -> bool {
        self.owner.is_some_and(|o| {
            std::ptr::addr_eq(o as *const dyn FrameOwner, owner as *const dyn FrameOwner)
        })
    }
}

impl Drop for LentFrame {
    #[inline(always)]
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Where a packet's bytes live.
#[derive(Debug)]
enum Buf {
    Own(Vec<u8>),
    Lent(LentFrame),
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Own(Vec::new())
    }
}

// The switch's own buffers are the common case (every TAP port, every
// benchmark on memory): their arm is inline, a lent frame's is out of line,
// so the hot path is a predicted branch rather than a select.
impl Buf {
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Own(v) => v,
            Buf::Lent(f) => f.get(),
        }
    }

    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Own(v) => v,
            Buf::Lent(f) => f.get_mut(),
        }
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.bytes().len()
    }
}

impl LentFrame {
    // Out of line, as the accessors: every place a packet may be dropped
    // carries this code, and inline it grew the stages enough that the
    // compiler stopped inlining decapsulation into the uplink stage (seen
    // in a profile of the VXLAN pipeline on memory).
    #[cold]
    #[inline(never)]
    fn give_back(&mut self) {
        if let Some(o) = self.owner.take() {
            o.give_back(std::mem::take(&mut self.bytes));
        }
    }

    #[cold]
    #[inline(never)]
    fn get(&self) -> &[u8] {
        self.bytes
    }

    #[cold]
    #[inline(never)]
    fn get_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// One frame in a buffer with headroom. The default is an empty packet with
/// no buffer (no allocation): what a moved-out slot is left holding.
#[derive(Debug, Default)]
pub struct Packet {
    buf: Buf,
    head: usize,
    len: usize,
    /// Per-frame metadata.
    pub meta: Meta,
}

impl Packet {
    fn with_capacity(frame: usize) -> Self {
        Self {
            buf: Buf::Own(vec![0; HEADROOM + frame]),
            head: HEADROOM,
            len: 0,
            meta: Meta::default(),
        }
    }

    /// A packet holding a copy of `data` (tests, benchmarks, flooding).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut p = Self::with_capacity(data.len().max(64));
        p.buf.bytes_mut()[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        p.len = data.len();
        p
    }

    /// A packet of `len` bytes at offset `head` of a lent frame (a frame a
    /// port received into): the bytes before `head` are its headroom.
    pub fn lent(frame: LentFrame, head: usize, len: usize) -> Self {
        let cap = frame.bytes.len();
        let head = head.min(cap);
        let len = len.min(cap - head);
        Self {
            buf: Buf::Lent(frame),
            head,
            len,
            meta: Meta::default(),
        }
    }

    /// Gives up the frame `owner` lent, without giving it back, leaving the
    /// packet empty: the port that lent it hands it on (to its transmit
    /// ring, no copy). Returns the frame and the packet's place in it
    /// (offset, length); `None`, the packet unchanged, for any other buffer.
    pub fn take_lent_from(
        &mut self,
        owner: &dyn FrameOwner,
    ) -> Option<(&'static mut [u8], usize, usize)> {
        if !matches!(&self.buf, Buf::Lent(f) if f.is_from(owner)) {
            return None;
        }
        let Buf::Lent(mut f) = std::mem::take(&mut self.buf) else {
            return None;
        };
        f.owner = None;
        let at = (std::mem::take(&mut f.bytes), self.head, self.len);
        self.len = 0;
        Some(at)
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf.bytes()[self.head..self.head + self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (h, l) = (self.head, self.len);
        &mut self.buf.bytes_mut()[h..h + l]
    }

    /// Frame length in bytes.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Everything from the start of the frame to the end of the buffer: where a
    /// port receives into. Call [`Packet::set_len`] afterwards.
    #[inline]
    pub fn rx_space(&mut self) -> &mut [u8] {
        self.head = HEADROOM;
        &mut self.buf.bytes_mut()[HEADROOM..]
    }

    /// Room for a frame from [`Packet::rx_space`].
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len().saturating_sub(HEADROOM)
    }

    /// Sets the frame length after a receive; clamps to the buffer.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len() - self.head);
    }

    /// Grows the frame at the front by `n` bytes of headroom; `None` if the
    /// headroom is used up.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.head {
            return None;
        }
        self.head -= n;
        self.len += n;
        let h = self.head;
        Some(&mut self.buf.bytes_mut()[h..h + n])
    }

    /// Removes `n` bytes from the front (decapsulation); `None` if shorter.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> Option<()> {
        if n > self.len {
            return None;
        }
        self.head += n;
        self.len -= n;
        Some(())
    }

    /// Whether this buffer is one of the large (TSO-sized) class.
    #[inline]
    pub fn is_large(&self) -> bool {
        matches!(&self.buf, Buf::Own(v) if v.len() >= HEADROOM + LARGE_FRAME)
    }

    /// Copies this frame (and its metadata) into a buffer from `pool`.
    pub fn clone_from_pool(&self, pool: &mut PacketPool) -> Packet {
        let mut p = if self.len > SMALL_FRAME {
            pool.get_large()
        } else {
            pool.get_small()
        };
        p.head = HEADROOM;
        p.buf.bytes_mut()[HEADROOM..HEADROOM + self.len].copy_from_slice(self.data());
        p.len = self.len;
        p.meta = self.meta;
        p
    }
}

/// A free list of small and large buffers owned by one worker.
///
/// Getting a buffer allocates only when the list is empty (warm-up, or a burst
/// larger than ever before); returning one beyond the cap frees it, so a
/// worker that receives more buffers than it sends cannot hoard memory.
#[derive(Debug)]
pub struct PacketPool {
    small: Vec<Packet>,
    large: Vec<Packet>,
    small_cap: usize,
    large_cap: usize,
}

impl Default for PacketPool {
    fn default() -> Self {
        Self::new(4096, 256)
    }
}

impl PacketPool {
    /// A pool that keeps at most `small_cap` small and `large_cap` large buffers.
    pub fn new(small_cap: usize, large_cap: usize) -> Self {
        Self {
            small: Vec::with_capacity(small_cap),
            large: Vec::with_capacity(large_cap),
            small_cap,
            large_cap,
        }
    }

    /// A buffer for frames up to [`SMALL_FRAME`] bytes.
    #[inline]
    pub fn get_small(&mut self) -> Packet {
        match self.small.pop() {
            Some(mut p) => {
                p.reset();
                p
            }
            None => Packet::with_capacity(SMALL_FRAME),
        }
    }

    /// A buffer for frames up to [`LARGE_FRAME`] bytes.
    #[inline]
    pub fn get_large(&mut self) -> Packet {
        match self.large.pop() {
            Some(mut p) => {
                p.reset();
                p
            }
            None => Packet::with_capacity(LARGE_FRAME),
        }
    }

    /// Gives a buffer back. Buffers smaller than their class (made by
    /// [`Packet::from_slice`]) are freed, never handed out again.
    #[inline]
    pub fn put(&mut self, p: Packet) {
        if p.is_large() {
            if self.large.len() < self.large_cap {
                self.large.push(p);
            }
        } else if matches!(p.buf, Buf::Own(_))
            && p.capacity() >= SMALL_FRAME
            && self.small.len() < self.small_cap
        {
            self.small.push(p);
        }
    }

    /// Gives back every buffer of `batch`, leaving it empty.
    #[inline]
    pub fn put_all(&mut self, batch: &mut Vec<Packet>) {
        for p in batch.drain(..) {
            self.put(p);
        }
    }

    /// Buffers currently free (small, large).
    pub fn free(&self) -> (usize, usize) {
        (self.small.len(), self.large.len())
    }
}

impl Packet {
    #[inline]
    fn reset(&mut self) {
        self.head = HEADROOM;
        self.len = 0;
        self.meta = Meta::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_push_and_pull() {
        let mut p = Packet::from_slice(&[1, 2, 3, 4]);
        let front = p.push_front(4).unwrap();
        front.copy_from_slice(&[9, 9, 9, 9]);
        assert_eq!(p.data(), &[9, 9, 9, 9, 1, 2, 3, 4]);
        p.pull_front(4).unwrap();
        assert_eq!(p.data(), &[1, 2, 3, 4]);
        assert!(p.pull_front(5).is_none());
        assert!(p.push_front(HEADROOM + 1).is_none());
    }

    /// Memory that lends its frames and records what comes back.
    #[derive(Debug, Default)]
    struct Lender {
        back: std::sync::Mutex<Vec<u8>>,
    }

    impl FrameOwner for Lender {
        fn give_back(&self, frame: &'static mut [u8]) {
            self.back.lock().unwrap().push(frame[0]);
        }
    }

    #[test]
    fn a_lent_frame_keeps_its_headroom_and_comes_back_once() {
        let owner: &'static Lender = Box::leak(Box::default());
        let mem: &'static mut [u8] = Vec::leak(vec![0u8; 3 * 512]);
        mem[256..260].copy_from_slice(&[1, 2, 3, 4]);
        let (a, rest) = mem.split_at_mut(512);
        let (b, c) = rest.split_at_mut(512);
        (a[0], b[0], c[0]) = (10, 11, 12);
        let (f0, f1, f2) = (
            LentFrame::new(a, owner),
            LentFrame::new(b, owner),
            LentFrame::new(c, owner),
        );
        assert!(f0.is_from(owner) && !f0.is_from(&Lender::default()));
        let mut p = Packet::lent(f0, 256, 4);
        assert_eq!(p.data(), &[1, 2, 3, 4]);
        // An outer header goes into the frame's own headroom: no copy.
        p.push_front(50).unwrap().fill(9);
        assert_eq!(p.len(), 54);
        assert_eq!(&p.data()[50..], &[1, 2, 3, 4]);
        assert!(p.push_front(207).is_none(), "206 bytes of headroom left");
        // Dropped anywhere, on any thread: the frame goes back.
        std::thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(*owner.back.lock().unwrap(), vec![10]);
        // The pool does not keep a lent frame; it gives it back.
        let mut pool = PacketPool::new(4, 1);
        pool.put(Packet::lent(f1, 256, 1));
        assert_eq!(pool.free(), (0, 0));
        assert_eq!(owner.back.lock().unwrap().len(), 2);
        // Handed on by its port (to a transmit ring): not given back.
        let mut q = Packet::lent(f2, 256, 60);
        assert!(
            q.take_lent_from(&Lender::default()).is_none(),
            "not its lender"
        );
        let (frame, head, len) = q.take_lent_from(owner).unwrap();
        assert_eq!((frame[0], head, len), (12, 256, 60));
        assert_eq!(q.len(), 0);
        drop(q);
        assert_eq!(owner.back.lock().unwrap().len(), 2);
        assert_eq!(Packet::from_slice(&[1]).take_lent_from(owner), None);
    }

    #[test]
    fn pool_recycles_and_caps() {
        let mut pool = PacketPool::new(2, 1);
        let a = pool.get_small();
        let b = pool.get_small();
        let c = pool.get_small();
        pool.put(a);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.free(), (2, 0));
        pool.put(Packet::from_slice(&[0u8; 60]));
        assert_eq!(pool.free(), (2, 0), "an undersized buffer is not pooled");
        let l = pool.get_large();
        assert!(l.is_large());
        assert!(l.capacity() >= LARGE_FRAME);
        pool.put(l);
        assert_eq!(pool.free(), (2, 1));
    }
}
