//! The UMEM's memory (2 MiB hugepages when reserved, ordinary pages
//! otherwise), and how its received frames are lent to the engine.
//!
//! A port lends each received frame to the engine as it is (no copy); the
//! frame comes back when the packet is dropped or transmitted, on whichever
//! worker that happens, through a lock-free queue the port drains into its
//! fill ring. A lent frame may outlive its port (a packet handed to another
//! worker), so the memory is never unmapped: a closed port's store goes to a
//! spare list, and a later port takes it once every frame it lent is back.
use crate::IoError;
use crossbeam::queue::ArrayQueue;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use vswitch_engine::packet::FrameOwner;

/// Stores of closed ports, kept for the next port.
static SPARE: Mutex<Vec<&'static FrameStore>> = Mutex::new(Vec::new());

/// One port's UMEM memory, lent to the kernel and to the engine frame by
/// frame.
#[derive(Debug)]
pub(crate) struct FrameStore {
    ptr: NonNull<u8>,
    len: usize,
    frame: usize,
    huge: bool,
    /// Frames dropped by the engine, from any thread.
    returned: ArrayQueue<u64>,
    /// Once the store is spare: frames lent out and not yet in `returned`
    /// when its port closed.
    owed: AtomicUsize,
}

// SAFETY: the mapping is never unmapped; its bytes are reached only through
// frames, each used by one party at a time (the kernel while on a ring, the
// port, or the one packet it is lent to); the queue and counter are
// thread-safe.
unsafe impl Send for FrameStore {}
// SAFETY: as above; `&FrameStore` exposes only the queue, the counter and
// frame slices handed out under the ring protocol.
unsafe impl Sync for FrameStore {}

impl FrameOwner for FrameStore {
    fn give_back(&self, frame: &'static mut [u8]) {
        // Never full: it holds at most every frame of the store.
        let _ = self.returned.push(self.addr_of(frame));
    }
}

impl FrameStore {
    /// A store of `frames` frames of `frame` bytes: a spare one of that size
    /// whose lent frames are all back (then `true`), or a new mapping.
    pub(crate) fn take(frames: usize, frame: usize) -> Result<(&'static Self, bool), IoError> {
        let len = frames * frame;
        {
            let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
            let free = spare.iter().position(|s| {
                s.len >= len
                    && s.frame == frame
                    && s.returned.len() >= s.owed.load(Ordering::Acquire)
            });
            if let Some(i) = free {
                let s = spare.swap_remove(i);
                while s.returned.pop().is_some() {}
                return Ok((s, true));
            }
        }
        let huge_len = len.div_ceil(2 << 20) * (2 << 20);
        for (flags, l, huge) in [
            (libc::MAP_HUGETLB | libc::MAP_POPULATE, huge_len, true),
            (libc::MAP_POPULATE, len, false),
        ] {
            // SAFETY: an anonymous private mapping at an address of the
            // kernel's choosing aliases no existing memory.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    l,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                if let Some(ptr) = NonNull::new(p.cast()) {
                    let s = Box::leak(Box::new(Self {
                        ptr,
                        len: l,
                        frame,
                        huge,
                        returned: ArrayQueue::new(l / frame),
                        owed: AtomicUsize::new(0),
                    }));
                    return Ok((s, false));
                }
            }
        }
        Err(IoError::last("mmap UMEM"))
    }

    /// Puts the store on the spare list once its port has closed its socket
    /// (the kernel writes none of it any more); `owed` frames are still lent.
    pub(crate) fn release(&'static self, owed: usize) {
        self.owed.store(owed, Ordering::Release);
        SPARE.lock().unwrap_or_else(|e| e.into_inner()).push(self);
    }

    pub(crate) fn huge(&self) -> bool {
        self.huge
    }

    /// The whole mapping, to register as the UMEM.
    pub(crate) fn as_nonnull(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// Zeroes every frame (a fresh port must not send an old port's bytes).
    pub(crate) fn zero(&self) {
        for addr in (0..self.len).step_by(self.frame) {
            if let Some(f) = self.frame(addr as u64) {
                f.fill(0);
            }
        }
    }

    /// Frames dropped by the engine since the last call.
    pub(crate) fn pop_returned(&self) -> Option<u64> {
        self.returned.pop()
    }

    /// The frame (chunk) holding `addr`, whole: the ring protocol made it
    /// ours (the RX ring handed it over, or it is on our free list), and it
    /// stays ours until we put it on a ring or it comes back from the packet
    /// we lend it to. `None` if out of bounds.
    pub(crate) fn frame(&self, addr: u64) -> Option<&'static mut [u8]> {
        let start = (addr as usize) & !(self.frame - 1);
        if start + self.frame > self.len {
            return None;
        }
        // SAFETY: in bounds of a mapping that is never unmapped (hence
        // 'static); exclusive by the ring protocol above: no other slice of
        // this frame exists until this one is given back or dropped unused.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), self.frame) })
    }

    /// The offset of a frame slice handed out by [`FrameStore::frame`].
    pub(crate) fn addr_of(&self, frame: &[u8]) -> u64 {
        (frame.as_ptr() as usize - self.ptr.as_ptr() as usize) as u64
    }
}
