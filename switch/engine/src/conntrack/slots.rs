//! The memory flow entries live in: one mapping of a [`Header`] and room
//! for `capacity` 64-byte [`FlowEntry`]s. Anonymous memory for a table that
//! dies with its process; a file on tmpfs (mapped shared by the I/O layer)
//! for one whose successor takes the flows over after a restart, because
//! every entry the old process wrote is in the page cache the moment it is
//! written, crash or not.
//!
//! The index is not kept there: a successor rebuilds it from the entries
//! with its own hash key, checking each one (see [`carried`]), so a torn
//! or stale write costs at most that flow.
use super::FlowEntry;
use bytemuck::{Pod, Zeroable};

/// First bytes of a flow file.
pub const MAGIC: [u8; 8] = *b"VSWFLOWS";
/// Layout of the header and entries this build writes and reads.
pub const LAYOUT: u32 = 1;
const HEADER: usize = std::mem::size_of::<Header>();
const ENTRY: usize = std::mem::size_of::<FlowEntry>();

/// The header of a flow mapping.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
pub struct Header {
    magic: [u8; 8],
    layout: u32,
    entry_size: u32,
    capacity: u64,
    /// Slots in use from the start (live or freed).
    used: u64,
    /// Bytes from this header to the next table's (one per worker, in
    /// one file); 0: the last.
    next: u64,
    _reserved: [u64; 3],
}

const _: () = assert!(HEADER == 64);

/// Memory for a flow table (see the module's text).
pub struct FlowMemory {
    map: memmap2::MmapMut,
    /// See [`Header::next`].
    next: u64,
    /// What must live as long as the mapping (the locked file).
    _owner: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for FlowMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowMemory")
            .field("bytes", &self.map.len())
            .finish()
    }
}

impl FlowMemory {
    /// Bytes a mapping for `capacity` flows takes.
    pub fn bytes_for(capacity: usize) -> usize {
        HEADER + capacity * ENTRY
    }

    /// Anonymous memory for `capacity` flows (pages are taken as flows
    /// arrive).
    pub fn anonymous(capacity: usize) -> std::io::Result<Self> {
        Ok(Self {
            map: memmap2::MmapMut::map_anon(Self::bytes_for(capacity))?,
            next: 0,
            _owner: None,
        })
    }

    /// Memory the caller mapped (at least [`FlowMemory::bytes_for`] bytes,
    /// zeroed), kept alive with `owner`.
    pub fn mapped(map: memmap2::MmapMut, owner: Box<dyn Send + Sync>) -> Self {
        Self::section(map, owner, 0)
    }

    /// One of several tables' memory in one file: the next table's header
    /// is `next` bytes after this one's (0: this is the last).
    pub fn section(map: memmap2::MmapMut, owner: Box<dyn Send + Sync>, next: u64) -> Self {
        Self {
            map,
            next,
            _owner: Some(owner),
        }
    }
}

/// The live entries in `bytes`, the flow mapping an earlier process wrote
/// (every table of it, one after another); an error says why none can be
/// taken (another layout, a short file).
pub fn carried(bytes: &[u8]) -> Result<Vec<FlowEntry>, String> {
    let mut all = Vec::new();
    let mut at = 0usize;
    loop {
        let (mut live, next) = carried_one(&bytes[at.min(bytes.len())..])?;
        all.append(&mut live);
        if next == 0 {
            return Ok(all);
        }
        at = at
            .checked_add(next as usize)
            .ok_or("a table's next offset overflows")?;
    }
}

/// The live entries of one table's mapping, and its header's
/// [`Header::next`].
fn carried_one(bytes: &[u8]) -> Result<(Vec<FlowEntry>, u64), String> {
    let h: Header = bytes
        .get(..HEADER)
        .map(bytemuck::pod_read_unaligned)
        .ok_or("shorter than its header")?;
    if h.magic != MAGIC {
        return Err("not a flow file".into());
    }
    if h.layout != LAYOUT || h.entry_size as usize != ENTRY {
        return Err(format!(
            "layout {} with {}-byte entries; this build reads layout {LAYOUT}, {ENTRY}-byte entries",
            h.layout, h.entry_size
        ));
    }
    let used = h.used.min(h.capacity) as usize;
    let body = bytes
        .get(HEADER..HEADER + used * ENTRY)
        .ok_or("shorter than its header says")?;
    // A next table must start past this one's entries.
    let end = (HEADER + h.capacity as usize * ENTRY) as u64;
    if h.next != 0 && h.next < end {
        return Err(format!("a table's next offset {} falls inside it", h.next));
    }
    let live = body
        .chunks_exact(ENTRY)
        .map(bytemuck::pod_read_unaligned::<FlowEntry>)
        .filter(FlowEntry::live)
        .collect();
    Ok((live, h.next))
}

/// The flow slots of a table: a vector's `push`/`get` over a
/// [`FlowMemory`], with the count of used slots kept in its header.
pub(super) struct Slots {
    mem: FlowMemory,
    used: usize,
    cap: usize,
}

impl Slots {
    /// Slots over `mem`, all free; writes the header.
    pub fn new(mut mem: FlowMemory, cap: usize) -> Self {
        let cap = cap.min((mem.map.len().saturating_sub(HEADER)) / ENTRY);
        let next = mem.next;
        mem.map[..HEADER].copy_from_slice(bytemuck::bytes_of(&Header {
            magic: MAGIC,
            layout: LAYOUT,
            entry_size: ENTRY as u32,
            capacity: cap as u64,
            used: 0,
            next,
            _reserved: [0; 3],
        }));
        Self { mem, used: 0, cap }
    }

    #[inline]
    fn all(&self) -> &[FlowEntry] {
        bytemuck::cast_slice(&self.mem.map[HEADER..HEADER + self.used * ENTRY])
    }

    #[inline]
    fn all_mut(&mut self) -> &mut [FlowEntry] {
        let end = HEADER + self.used * ENTRY;
        bytemuck::cast_slice_mut(&mut self.mem.map[HEADER..end])
    }

    /// Slots used so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.used
    }

    /// Slots there is room for.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&FlowEntry> {
        self.all().get(i)
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut FlowEntry> {
        self.all_mut().get_mut(i)
    }

    /// Takes one more slot for `e`; `None` when there is no room.
    pub fn push(&mut self, e: FlowEntry) -> Option<usize> {
        if self.used >= self.cap {
            return None;
        }
        self.used += 1;
        let i = self.used - 1;
        self.all_mut()[i] = e;
        let used = self.used as u64;
        let h: &mut Header = bytemuck::from_bytes_mut(&mut self.mem.map[..HEADER]);
        h.used = used;
        Some(i)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, FlowEntry> {
        self.all().iter()
    }

    /// The whole mapping, header first (what a successor reads).
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.mem.map[..]
    }

    /// Start and length of the entries' memory (for huge page advice).
    pub fn region(&self) -> (*const u8, usize) {
        let m = &self.mem.map[HEADER..];
        (m.as_ptr(), self.cap * ENTRY)
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = FlowEntry;
    #[inline]
    fn index(&self, i: usize) -> &FlowEntry {
        &self.all()[i]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut FlowEntry {
        &mut self.all_mut()[i]
    }
}
