//! Packet formats. smoltcp's `wire` views cover Ethernet, ARP, IPv4/6, TCP,
//! UDP and ICMP; this module adds what smoltcp lacks: the virtio-net header
//! that TAP devices exchange, the VXLAN header, a fast MAC key, and the Internet checksum over an
//! arbitrary range (smoltcp keeps its own private).
pub mod announce;
pub mod checksum;
pub mod mac;
pub mod virtio;
pub mod vxlan;

pub use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv6Packet, TcpPacket, UdpPacket,
};
