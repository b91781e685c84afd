//! The file a switch keeps its connection-tracking entries in, so that the
//! next switch process takes them over (see
//! `vswitch_engine::conntrack::FlowMemory`). It belongs in a tmpfs runtime
//! directory (`/run/vswitch`): flows outlive the process, not the boot.
//!
//! The file holds one table per worker, one after another, each at a page
//! boundary. Opening takes an exclusive `flock` (one switch per file), reads
//! the live entries an earlier process left (of every table, whatever the
//! number of workers then), then starts the file afresh at the size
//! `max_flows` needs in each of `tables` tables (sparse: pages are taken as
//! flows arrive).
use crate::IoError;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use vswitch_engine::conntrack::{carried, FlowEntry, FlowMemory};

/// What opening a flow file found.
pub struct Opened {
    /// Memory for each new table, mapped from the file.
    pub memory: Vec<FlowMemory>,
    /// Live entries an earlier process left (unchecked: the table checks
    /// each as it takes it over).
    pub carried: Vec<FlowEntry>,
    /// Why an existing file's entries were not read, if they were not.
    pub unreadable: Option<String>,
}

/// Opens (creating) the flow file at `path` for `tables` tables of
/// `max_flows` flows each.
pub fn open(path: &Path, max_flows: usize, tables: usize) -> Result<Opened, IoError> {
    let what = |m: String| IoError::Other(format!("flow file {}: {m}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| what(format!("cannot create its directory: {e}")))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| what(e.to_string()))?;
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| what(format!("another vswitch uses it ({e})")))?;
    let len = file.metadata().map_err(|e| what(e.to_string()))?.len();
    let (carried, unreadable) = if len == 0 {
        (Vec::new(), None)
    } else {
        // SAFETY: the file is ours alone (flock above) and nothing changes
        // its length while this read-only view lives.
        match unsafe { memmap2::Mmap::map(&*file) } {
            Ok(old) => match carried(&old) {
                Ok(v) => (v, None),
                Err(e) => (Vec::new(), Some(e)),
            },
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    };
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64);
    let stride = (FlowMemory::bytes_for(max_flows) as u64).next_multiple_of(page);
    let tables = tables.max(1) as u64;
    let bytes = stride * tables;
    file.set_len(0).map_err(|e| what(e.to_string()))?;
    file.set_len(bytes)
        .map_err(|e| what(format!("cannot size it to {bytes} bytes: {e}")))?;
    let file = std::sync::Arc::new(file);
    let mut memory = Vec::new();
    for i in 0..tables {
        // SAFETY: as above: the file is locked for this process, which
        // alone sets its length, and each mapping lives as long as the lock
        // (the file goes into every FlowMemory). The sections do not
        // overlap.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(i * stride)
                .len(stride as usize)
                .map_mut(&**file)
        }
        .map_err(|e| what(e.to_string()))?;
        let next = if i + 1 < tables { stride } else { 0 };
        memory.push(FlowMemory::section(map, Box::new(file.clone()), next));
    }
    Ok(Opened {
        memory,
        carried,
        unreadable,
    })
}
