//! Ports that touch the kernel, and the workers' runtime (threads, eventfd,
//! `poll(2)`). Every `unsafe` block of vswitch lives here,
//! each with a `SAFETY:` comment: ring and UMEM memory, ioctls, `bpf(2)`,
//! the mapped flow file.
pub mod afxdp;
pub mod ethtool;
pub mod flowfile;
pub mod hugepage;
pub mod placement;
pub mod runtime;
pub mod tap;

/// Setup errors, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A system call failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The interface does not exist.
    #[error("no interface named {0:?} (check `ip link` in the switch's network namespace)")]
    NoInterface(String),
    /// Anything else, said in full.
    #[error("{0}")]
    Other(String),
}

impl IoError {
    pub(crate) fn last(what: impl Into<String>) -> Self {
        IoError::Sys {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
    pub(crate) fn errno(what: impl Into<String>, e: impl Into<std::io::Error>) -> Self {
        IoError::Sys {
            what: what.into(),
            source: e.into(),
        }
    }
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32, IoError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| IoError::NoInterface(name.to_string()))
}
