//! ARP: the gateway's answers (for its own address to containers, for a
//! SNAT address the kernel does not hold on the uplink), and ARP
//! suppression on overlays. Read and written through smoltcp's checked view.
use super::ipv4::{ethertype, ETH_LEN, ETH_P_ARP};
use super::{Action, Hdr};
use crate::packet::Packet;
use crate::port::PortId;
use crate::tables::OverlayView;
use crate::wire::mac::Mac;
use smoltcp::wire::{ArpOperation, ArpPacket};

/// ARP request's target address, if `f` is one.
pub(crate) fn arp_request_target(f: &[u8]) -> Option<u32> {
    let arp = ArpPacket::new_checked(f.get(ETH_LEN..)?).ok()?;
    if arp.operation() != ArpOperation::Request || arp.protocol_len() != 4 {
        return None;
    }
    let t = arp.target_protocol_addr();
    Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
}

/// Turns an ARP request in `f` into the reply from `mac`/`ip`, in place.
pub(crate) fn arp_reply_in_place(f: &mut [u8], mac: Mac, ip: u32) -> bool {
    let Some(body) = f.get_mut(ETH_LEN..) else {
        return false;
    };
    let Ok(mut arp) = ArpPacket::new_checked(body) else {
        return false;
    };
    let (sha, spa) = (
        arp.source_hardware_addr().to_vec(),
        arp.source_protocol_addr().to_vec(),
    );
    if sha.len() != 6 || spa.len() != 4 {
        return false;
    }
    arp.set_operation(ArpOperation::Reply);
    arp.set_target_hardware_addr(&sha);
    arp.set_target_protocol_addr(&spa);
    arp.set_source_hardware_addr(&mac.bytes());
    arp.set_source_protocol_addr(&ip.to_be_bytes());
    f[0..6].copy_from_slice(&sha);
    f[6..12].copy_from_slice(&mac.bytes());
    true
}

/// ARP suppression: a local broadcast ARP request for an address the overlay
/// knows (a static binding) is answered here, in place, instead of being
/// flooded to every host.
#[inline]
pub fn suppress_arp(batch: &mut [Packet], hdrs: &mut [Hdr], ov: &OverlayView, in_port: PortId) {
    for (p, h) in batch.iter_mut().zip(hdrs.iter_mut()) {
        if h.action != Action::Flood || h.dst != Mac::BROADCAST || ethertype(p.data()) != ETH_P_ARP
        {
            continue;
        }
        let Some(ip) = arp_request_target(p.data()) else {
            continue;
        };
        if let Some(&mac) = ov.arp.get(&ip) {
            if arp_reply_in_place(p.data_mut(), mac, ip) {
                h.action = Action::Unicast(in_port);
            }
        }
    }
}
