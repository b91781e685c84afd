//! Frames with headroom, and the per-worker pool they come from.
//!
//! A [`Packet`] owns its buffer, so moving it between stages, ports or workers
//! never copies the frame. Headroom in front of the frame lets encapsulation
//! (VXLAN, virtio-net headers) prepend bytes by moving the start offset.
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

/// One frame in a buffer with headroom. The default is an empty packet with
/// no buffer (no allocation): what a moved-out slot is left holding.
#[derive(Debug, Default)]
pub struct Packet {
    buf: Vec<u8>,
    head: usize,
    len: usize,
    /// Per-frame metadata.
    pub meta: Meta,
}

impl Packet {
    fn with_capacity(frame: usize) -> Self {
        Self {
            buf: vec![0; HEADROOM + frame],
            head: HEADROOM,
            len: 0,
            meta: Meta::default(),
        }
    }

    /// A packet holding a copy of `data` (tests, benchmarks, flooding).
    pub fn from_slice(data: &[u8]) -> Self {
        let mut p = Self::with_capacity(data.len().max(64));
        p.buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        p.len = data.len();
        p
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
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
        &mut self.buf[HEADROOM..]
    }

    /// Room for a frame from [`Packet::rx_space`].
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len() - HEADROOM
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
        Some(&mut self.buf[self.head..self.head + n])
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
        self.buf.len() >= HEADROOM + LARGE_FRAME
    }

    /// Copies this frame (and its metadata) into a buffer from `pool`.
    pub fn clone_from_pool(&self, pool: &mut PacketPool) -> Packet {
        let mut p = if self.len > SMALL_FRAME {
            pool.get_large()
        } else {
            pool.get_small()
        };
        p.head = HEADROOM;
        p.buf[HEADROOM..HEADROOM + self.len].copy_from_slice(self.data());
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
        } else if p.capacity() >= SMALL_FRAME && self.small.len() < self.small_cap {
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
