//! vswitch engine: the platform-free core of the switch.
//!
//! Frames ([`packet`]), the [`port::Port`] trait every I/O backend implements,
//! the tables the control plane publishes ([`tables`], [`fdb`]), the pipeline
//! stages ([`pipeline`]) and the poll-mode [`worker`] loop. Nothing here opens a
//! socket or a device: the `vswitch-io` crate does, behind [`port::Port`].
#![forbid(unsafe_code)]

pub mod clock;
pub mod conntrack;
pub mod fdb;
pub mod hash;
pub mod memport;
pub mod packet;
pub mod pipeline;
pub mod port;
pub mod prefetch;
pub mod stats;
pub mod tables;
pub mod wire;
pub mod worker;

pub use packet::{Packet, PacketPool};
pub use port::{Port, PortCaps, PortError, PortId};
