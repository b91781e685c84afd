//! Transmit-time stage: make frames fit what the output port accepts.
//!
//! A TAP with virtio-net headers hands the switch TSO segments of up to 64 KiB
//! and checksum-partial frames. A port that takes them (another such TAP) gets
//! them as they are: this is what keeps TCP fast. For any other port the
//! switch does in software what the NIC would: finish the checksum, or cut the
//! segment into MSS-sized TCP segments with their own IP and TCP headers.
use crate::packet::{Packet, PacketPool, SMALL_FRAME};
use crate::port::PortCaps;
use crate::stats::{BatchDrops, DropReason};
use crate::wire::checksum;
use crate::wire::virtio::{GsoKind, Offload};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;

/// Adapts every frame of `q` to `caps`, in place; `scratch` is reused space.
pub fn prepare(
    q: &mut Vec<Packet>,
    caps: PortCaps,
    pool: &mut PacketPool,
    scratch: &mut Vec<Packet>,
    drops: &mut BatchDrops,
) {
    let needs_work = q.iter().any(|p| {
        let o = &p.meta.offload;
        (o.gso.is_some() && !caps.tso)
            || (o.csum.is_some() && !caps.csum)
            || (caps.max_frame != 0 && p.len() > caps.max_frame && o.gso.is_none())
    });
    if !needs_work {
        return;
    }
    scratch.clear();
    for mut p in q.drain(..) {
        let o = p.meta.offload;
        if o.gso.is_some() && !caps.tso {
            if segment(&p, pool, scratch).is_none() {
                drops.add(DropReason::BadOffload);
            }
            pool.put(p);
            continue;
        }
        if let Some(c) = o.csum.filter(|_| !caps.csum) {
            if !checksum::complete_partial(p.data_mut(), c.start as usize, c.offset as usize) {
                drops.add(DropReason::BadOffload);
                pool.put(p);
                continue;
            }
            p.meta.offload = Offload::default();
        }
        if caps.max_frame != 0 && p.len() > caps.max_frame && p.meta.offload.gso.is_none() {
            drops.add(DropReason::TooBig);
            pool.put(p);
            continue;
        }
        scratch.push(p);
    }
    std::mem::swap(q, scratch);
}

/// Where the headers of a TCP frame are.
pub(crate) struct TcpLayout {
    pub(crate) l3: usize,
    pub(crate) l4: usize,
    pub(crate) hdrs: usize,
    pub(crate) v4: bool,
}

pub(crate) fn tcp_layout(f: &[u8]) -> Option<TcpLayout> {
    let mut l3 = 14;
    let mut ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if ethertype == ETH_P_VLAN {
        ethertype = u16::from_be_bytes([*f.get(16)?, *f.get(17)?]);
        l3 = 18;
    }
    let (l4, v4) = match ethertype {
        ETH_P_IPV4 => {
            let ihl = (*f.get(l3)? & 0x0f) as usize * 4;
            if ihl < 20 || *f.get(l3 + 9)? != IPPROTO_TCP {
                return None;
            }
            (l3 + ihl, true)
        }
        ETH_P_IPV6 => {
            if *f.get(l3 + 6)? != IPPROTO_TCP {
                return None;
            }
            (l3 + 40, false)
        }
        _ => return None,
    };
    let doff = (*f.get(l4 + 12)? >> 4) as usize * 4;
    if doff < 20 || l4 + doff > f.len() {
        return None;
    }
    Some(TcpLayout {
        l3,
        l4,
        hdrs: l4 + doff,
        v4,
    })
}

/// What the headers of the first segment of a TSO frame said, and the
/// parts of every segment's checksums that stay the same from one segment to
/// the next, summed once from the frame itself. [`fix_segment`] then writes
/// each segment's changed fields and checksums without reading its headers
/// back: reading 8-byte words over fields just stored 2 and 4 bytes at a
/// time defeats store-to-load forwarding, and that stall was most of its
/// time (perf, VXLAN TCP across hosts: 5.6 % of the worker core).
pub(crate) struct SegFirst {
    pub(crate) seq: u32,
    pub(crate) ip_id: u16,
    pub(crate) flags: u8,
    pub(crate) mss: usize,
    /// The IPv4 header's sum without total length, id and checksum (folded).
    ip_sum: u32,
    /// The pseudo-header's addresses and protocol and the TCP header's sum
    /// without sequence number, flags and checksum (folded).
    tcp_sum: u32,
}

impl SegFirst {
    /// From TSO frame `f` with layout `t`, cut at `mss`.
    pub(crate) fn new(f: &[u8], t: &TcpLayout, mss: usize) -> Option<SegFirst> {
        let ip = f.get(t.l3..t.l4)?;
        let tcp = f.get(t.l4..t.hdrs)?;
        let mut ip_sum = 0;
        if t.v4 {
            let mut h = [0u8; 60];
            let h = h.get_mut(..ip.len())?;
            h.copy_from_slice(ip);
            h[2..6].fill(0);
            h[10..12].fill(0);
            ip_sum = checksum::fold(checksum::sum(0, h)) as u32;
        }
        let mut th = [0u8; 60];
        let th = th.get_mut(..tcp.len())?;
        th.copy_from_slice(tcp);
        th[4..8].fill(0);
        th[13] = 0;
        th[16..18].fill(0);
        let addrs = if t.v4 {
            f.get(t.l3 + 12..t.l3 + 20)?
        } else {
            f.get(t.l3 + 8..t.l3 + 40)?
        };
        let pseudo = checksum::sum(IPPROTO_TCP as u32, addrs);
        Some(SegFirst {
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
            flags: tcp[13],
            mss,
            ip_sum,
            tcp_sum: checksum::fold(checksum::sum(pseudo, th)) as u32,
        })
    }
}

/// Makes the headers of segment `i` of `nseg` right (already copied into
/// `d`, whose length is the segment's, with `payload`, the segment's payload
/// as it stands in the source frame, copied behind them): IP length, id and
/// checksum, TCP sequence number, flags (FIN/PSH only on the last, CWR only
/// on the first) and a complete TCP checksum. Only writes `d`.
pub(crate) fn fix_segment(
    d: &mut [u8],
    t: &TcpLayout,
    first: &SegFirst,
    i: usize,
    nseg: usize,
    payload: &[u8],
) {
    let len = d.len();
    let l4_len = len - t.l4;
    if t.v4 {
        let tot = (len - t.l3) as u16;
        let id = first.ip_id.wrapping_add(i as u16);
        d[t.l3 + 2..t.l3 + 4].copy_from_slice(&tot.to_be_bytes());
        d[t.l3 + 4..t.l3 + 6].copy_from_slice(&id.to_be_bytes());
        let c = !checksum::fold(first.ip_sum + tot as u32 + id as u32);
        d[t.l3 + 10..t.l3 + 12].copy_from_slice(&c.to_be_bytes());
    } else {
        d[t.l3 + 4..t.l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let seq = first.seq.wrapping_add((i * first.mss) as u32);
    d[t.l4 + 4..t.l4 + 8].copy_from_slice(&seq.to_be_bytes());
    let mut flags = first.flags;
    if i + 1 < nseg {
        flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
    }
    if i > 0 {
        flags &= !0x80; // CWR only on the first
    }
    d[t.l4 + 13] = flags;
    let acc = first.tcp_sum + l4_len as u32 + (seq >> 16) + (seq & 0xffff) + flags as u32;
    let c = checksum::finish(acc, payload);
    d[t.l4 + 16..t.l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Cuts a TSO frame into MSS-sized segments appended to `out`. `None` if the
/// frame is not a TCP segment vswitch can cut (counted by the caller).
pub fn segment(p: &Packet, pool: &mut PacketPool, out: &mut Vec<Packet>) -> Option<usize> {
    let g = p.meta.offload.gso?;
    if !matches!(g.kind, GsoKind::Tcp4 | GsoKind::Tcp6) || g.size == 0 {
        return None;
    }
    let f = p.data();
    let t = tcp_layout(f)?;
    if t.v4 != (g.kind == GsoKind::Tcp4) {
        return None;
    }
    let mss = g.size as usize;
    let payload = &f[t.hdrs..];
    if t.hdrs + mss > SMALL_FRAME {
        return None;
    }
    let first = SegFirst::new(f, &t, mss)?;
    let nseg = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(
            // A TSO frame with no payload still yields its one header-only segment.
            std::iter::once(&[][..]).take(usize::from(payload.is_empty())),
        )
        .enumerate()
    {
        let mut s = pool.get_small();
        let len = t.hdrs + chunk.len();
        let buf = s.rx_space();
        buf[..t.hdrs].copy_from_slice(&f[..t.hdrs]);
        buf[t.hdrs..len].copy_from_slice(chunk);
        s.set_len(len);
        s.meta = p.meta;
        s.meta.offload = Offload::default();
        fix_segment(s.data_mut(), &t, &first, i, nseg, chunk);
        out.push(s);
    }
    Some(nseg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::virtio::{CsumPartial, Gso};
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, TcpPacket,
    };

    /// A TCP/IPv4 frame with `payload` bytes, its TCP checksum left partial
    /// (pseudo-header only), as a TAP hands it over.
    fn tso_frame(payload: usize, fin: bool) -> Packet {
        tso_frame_mss(payload, fin, 1000)
    }

    /// [`tso_frame`] with an MSS of `mss`.
    pub(crate) fn tso_frame_mss(payload: usize, fin: bool, mss: u16) -> Packet {
        let src = Ipv4Address::new(10, 0, 0, 1);
        let dst = Ipv4Address::new(10, 0, 0, 2);
        let tcp_len = 20 + payload;
        let mut buf = vec![0u8; 14 + 20 + tcp_len];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp_len,
            hop_limit: 64,
        }
        .emit(&mut ip, &smoltcp::phy::ChecksumCapabilities::default());
        let tcp = &mut buf[34..];
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18 | if fin { 1 } else { 0 }; // PSH ACK (FIN)
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        // partial checksum: pseudo-header sum, not complemented
        let mut acc = checksum::sum(0, &src.octets());
        acc = checksum::sum(acc, &dst.octets());
        acc += 6 + tcp_len as u32;
        tcp[16..18].copy_from_slice(&checksum::fold(acc).to_be_bytes());
        let mut p = Packet::from_slice(&buf);
        p.meta.offload = Offload {
            csum: Some(CsumPartial {
                start: 34,
                offset: 16,
            }),
            gso: Some(Gso {
                kind: GsoKind::Tcp4,
                size: mss,
                hdr_len: 54,
                ecn: false,
            }),
            data_valid: false,
        };
        p
    }

    /// Checks the IPv4 and TCP checksums of a frame; its sequence number,
    /// TCP flags and payload length.
    pub(crate) fn tcp_ok(f: &[u8]) -> (u32, u8, usize) {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        (tcp.seq_number().0 as u32, f[34 + 13], tcp.payload().len())
    }

    #[test]
    fn segments_tso_with_valid_checksums() {
        let p = tso_frame(3500, true);
        let mut pool = PacketPool::default();
        let mut out = Vec::new();
        assert_eq!(segment(&p, &mut pool, &mut out), Some(4));
        let segs: Vec<_> = out.iter().map(|s| tcp_ok(s.data())).collect();
        assert_eq!(segs[0], (1000, 0x10, 1000));
        assert_eq!(segs[1], (2000, 0x10, 1000));
        assert_eq!(segs[3], (4000, 0x19, 500), "PSH and FIN only on the last");
        let ids: Vec<_> = out
            .iter()
            .map(|s| u16::from_be_bytes([s.data()[18], s.data()[19]]))
            .collect();
        assert_eq!(ids[1], ids[0].wrapping_add(1));
    }

    #[test]
    fn completes_partial_checksum_for_plain_ports() {
        let mut p = tso_frame(500, false);
        p.meta.offload.gso = None;
        let mut q = vec![p];
        let mut pool = PacketPool::default();
        let mut drops = BatchDrops::default();
        let caps = PortCaps {
            csum: false,
            tso: false,
            max_frame: 1514,
        };
        prepare(&mut q, caps, &mut pool, &mut Vec::new(), &mut drops);
        assert_eq!(q.len(), 1);
        tcp_ok(q[0].data());
        assert!(q[0].meta.offload.is_none());
    }

    #[test]
    fn offload_capable_port_gets_frame_untouched() {
        let p = tso_frame(3500, false);
        let before = p.data().to_vec();
        let mut q = vec![p];
        let caps = PortCaps {
            csum: true,
            tso: true,
            max_frame: 65535,
        };
        prepare(
            &mut q,
            caps,
            &mut PacketPool::default(),
            &mut Vec::new(),
            &mut BatchDrops::default(),
        );
        assert_eq!(q[0].data(), &before[..]);
    }

    #[test]
    fn garbage_tso_is_a_counted_drop() {
        let mut p = Packet::from_slice(&[0u8; 60]);
        p.meta.offload.gso = Some(Gso {
            kind: GsoKind::Tcp4,
            size: 1000,
            hdr_len: 54,
            ecn: false,
        });
        let mut q = vec![p];
        let mut drops = BatchDrops::default();
        let stats = crate::stats::PortStats::default();
        prepare(
            &mut q,
            PortCaps::default(),
            &mut PacketPool::default(),
            &mut Vec::new(),
            &mut drops,
        );
        drops.flush(&stats);
        assert!(q.is_empty());
        assert_eq!(stats.drops_of(DropReason::BadOffload), 1);
    }
}
