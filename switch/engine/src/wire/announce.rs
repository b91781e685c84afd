//! Frames the control plane sends on its own: a gratuitous ARP that tells
//! the hosts of a segment where an address is, as QEMU announces a guest
//! after a migration. A switch that took over a running network sends one
//! for every known address, so that a neighbour entry a container left
//! half-resolved while the switch was down is completed at once instead of
//! at its next retransmission (a second later).
use super::mac::Mac;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};
use std::net::Ipv4Addr;

/// A gratuitous ARP request from `mac` for `ip` (sender and target address
/// both `ip`), broadcast.
pub fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let src = EthernetAddress(mac.bytes());
    let eth = EthernetRepr {
        src_addr: src,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: src,
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ip,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_back_as_a_gratuitous_request() {
        let mac: Mac = "02:00:00:00:00:07".parse().unwrap();
        let ip = Ipv4Addr::new(10, 1, 0, 7);
        let f = gratuitous_arp(mac, ip);
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(mac.bytes()),
                source_protocol_addr: ip,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: ip,
            }
        );
    }
}
