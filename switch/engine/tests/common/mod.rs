//! What the engine's integration tests share.
#![allow(dead_code)] // each test crate uses its own part
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use vswitch_engine::wire::mac::Mac;

/// A seeded xorshift64 generator: deterministic random input for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One of `v` (not empty).
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// A TCP segment in an Ethernet frame, every checksum right.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    dst_mac: Mac,
    src_mac: Mac,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control: if syn {
            TcpControl::Syn
        } else {
            TcpControl::None
        },
        seq_number: TcpSeqNumber(1000),
        ack_number: if syn { None } else { Some(TcpSeqNumber(1)) },
        window_len: 1000,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ipr = Ipv4Repr {
        src_addr: Ipv4Address::from(src),
        dst_addr: Ipv4Address::from(dst),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(src_mac.bytes()),
        dst_addr: EthernetAddress(dst_mac.bytes()),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ipr.buffer_len() + tcp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut ipp = Ipv4Packet::new_unchecked(f.payload_mut());
    ipr.emit(&mut ipp, &ChecksumCapabilities::default());
    let mut t = TcpPacket::new_unchecked(ipp.payload_mut());
    tcp.emit(
        &mut t,
        &IpAddress::Ipv4(ipr.src_addr),
        &IpAddress::Ipv4(ipr.dst_addr),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// Parses a TCP frame the switch sent; checks every checksum from scratch.
pub fn check(frame: &[u8]) -> (Mac, Mac, Ipv4Address, u16, Ipv4Address, u16, u8) {
    let f = EthernetFrame::new_checked(frame).unwrap();
    let ipp = Ipv4Packet::new_checked(f.payload()).unwrap();
    assert!(ipp.verify_checksum(), "bad IPv4 checksum");
    let t = TcpPacket::new_checked(ipp.payload()).unwrap();
    assert!(
        t.verify_checksum(
            &IpAddress::Ipv4(ipp.src_addr()),
            &IpAddress::Ipv4(ipp.dst_addr())
        ),
        "bad TCP checksum"
    );
    let m = |a: EthernetAddress| Mac::from_bytes(&a.0);
    (
        m(f.dst_addr()),
        m(f.src_addr()),
        ipp.src_addr(),
        t.src_port(),
        ipp.dst_addr(),
        t.dst_port(),
        ipp.hop_limit(),
    )
}
