//! Transparent huge pages for the engine's large tables.
//!
//! A lookup in a table of a million flows misses the TLB as well as the
//! cache: with 4 KiB pages its 80 MiB span 20,000 pages, and on a virtual
//! machine each TLB miss is a two-level page walk (guest and host tables),
//! itself a chain of memory loads. Backed by 2 MiB pages the same tables take
//! 40 TLB entries. The engine allocates its tables once, up front; this asks
//! the kernel to back them with huge pages (`MADV_HUGEPAGE` for pages not yet
//! touched, `MADV_COLLAPSE` for those already written). It is advice: where
//! the kernel has THP off, or no huge page is free, the tables keep working
//! on small pages.

/// What [`advise`] got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// Bytes marked for huge pages (`MADV_HUGEPAGE` accepted).
    pub marked: usize,
    /// Bytes collapsed into huge pages now (`MADV_COLLAPSE` accepted).
    pub collapsed: usize,
}

/// Asks for huge pages under each `(start, len)` region (the whole 2 MiB
/// pages inside it; a smaller region is left alone). Never fails: what the
/// kernel refuses stays on small pages, and [`Advice`] says how much was
/// accepted.
pub fn advise(regions: &[(*const u8, usize)]) -> Advice {
    const HUGE: usize = 2 << 20;
    let mut got = Advice::default();
    for &(start, len) in regions {
        let a = (start as usize).next_multiple_of(HUGE);
        let end = (start as usize).saturating_add(len) / HUGE * HUGE;
        if end <= a {
            continue;
        }
        let (p, n) = (a as *mut libc::c_void, end - a);
        // SAFETY: [a, end) lies inside an allocation the caller owns (the
        // region it named), aligned to whole pages. Neither advice changes
        // what the memory holds or who may use it: MADV_HUGEPAGE only marks
        // the range, MADV_COLLAPSE copies its pages into huge pages in place
        // and leaves the contents as they were.
        if unsafe { libc::madvise(p, n, libc::MADV_HUGEPAGE) } == 0 {
            got.marked += n;
        }
        // SAFETY: as above.
        if unsafe { libc::madvise(p, n, libc::MADV_COLLAPSE) } == 0 {
            got.collapsed += n;
        }
    }
    got
}
