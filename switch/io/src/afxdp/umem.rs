//! The UMEM's memory: 2 MiB hugepages when reserved, ordinary pages otherwise.
use crate::IoError;
use std::ptr::NonNull;

/// An anonymous mapping shared with the kernel through the UMEM.
#[derive(Debug)]
pub(crate) struct Area {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
}

impl Area {
    pub(crate) fn new(len: usize) -> Result<Self, IoError> {
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
                    return Ok(Self { ptr, len: l, huge });
                }
            }
        }
        Err(IoError::last("mmap UMEM"))
    }

    pub(crate) fn huge(&self) -> bool {
        self.huge
    }

    pub(crate) fn as_nonnull(&mut self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    pub(crate) fn zero(&mut self) {
        if let Some(s) = self.frame_mut(0, self.len as u32) {
            s.fill(0);
        }
    }

    /// A received frame. The RX ring handed frame `addr` to us: until we give
    /// it back to the fill ring the kernel does not write it.
    pub(crate) fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let end = (addr as usize).checked_add(len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above) of a live mapping; the ring
        // protocol gives us exclusive use of this frame until it is refilled.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(addr as usize), len as usize)
        })
    }

    /// A frame to transmit from: it is on our free list, so the kernel is not
    /// reading it.
    pub(crate) fn frame_mut(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let end = (addr as usize).checked_add(len as usize)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of a live mapping; frames on the TX free list are
        // owned by us alone, and `&mut self` prevents aliasing slices.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(addr as usize), len as usize)
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the UMEM and
        // rings that referenced it were dropped before (field order).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
