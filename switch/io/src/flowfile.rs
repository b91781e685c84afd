//! The file a switch keeps its connection-tracking entries in, so that the
//! next switch process takes them over (see
//! `vswitch_engine::conntrack::FlowMemory`). It belongs in a tmpfs runtime
//! directory (`/run/vswitch`): flows outlive the process, not the boot.
//!
//! Opening takes an exclusive `flock` (one switch per file), reads the live
//! entries an earlier process left, then starts the file afresh at the size
//! `max_flows` needs (sparse: pages are taken as flows arrive).
use crate::IoError;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use vswitch_engine::conntrack::{carried, FlowEntry, FlowMemory};

/// What opening a flow file found.
pub struct Opened {
    /// Memory for the new table, mapped from the file.
    pub memory: FlowMemory,
    /// Live entries an earlier process left (unchecked: the table checks
    /// each as it takes it over).
    pub carried: Vec<FlowEntry>,
    /// Why an existing file's entries were not read, if they were not.
    pub unreadable: Option<String>,
}

/// Opens (creating) the flow file at `path` for `max_flows` flows.
pub fn open(path: &Path, max_flows: usize) -> Result<Opened, IoError> {
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
    let bytes = FlowMemory::bytes_for(max_flows) as u64;
    file.set_len(0).map_err(|e| what(e.to_string()))?;
    file.set_len(bytes)
        .map_err(|e| what(format!("cannot size it to {bytes} bytes: {e}")))?;
    // SAFETY: as above: the file is locked for this process, which alone
    // sets its length, and the mapping lives as long as the lock (both go
    // into the FlowMemory).
    let map = unsafe { memmap2::MmapMut::map_mut(&*file) }.map_err(|e| what(e.to_string()))?;
    Ok(Opened {
        memory: FlowMemory::mapped(map, Box::new(file)),
        carried,
        unreadable,
    })
}
