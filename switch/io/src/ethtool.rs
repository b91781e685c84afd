//! Turning TX checksum offload off on a veth end.
//!
//! An AF_XDP socket receives no metadata that says a frame's checksum is only
//! partial, so a container's veth must finish checksums itself (which also
//! turns TSO off: the kernel segments before the veth). The `ethtool` crate
//! (rust-netlink) can read features but not set them; `SIOCETHTOOL` with
//! `ETHTOOL_STXCSUM` is the kernel's stable interface for this one switch.
use crate::IoError;
use std::os::fd::AsRawFd;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Sets TX checksumming of `ifname` (in the calling thread's namespace).
pub fn set_tx_csum(ifname: &str, on: bool) -> Result<(), IoError> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| IoError::errno("socket for SIOCETHTOOL", e))?;
    let mut val = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: on as u32,
    };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut val,
        _pad: [0; 16],
    };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads a `struct ifreq` whose data pointer points to a
    // `struct ethtool_value`; both live on this stack frame across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } < 0 {
        return Err(IoError::last(format!(
            "ethtool tx-checksumming on {ifname}"
        )));
    }
    Ok(())
}
