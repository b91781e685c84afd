//! Stage 2: learn source MACs on the ingress port.
use super::{Action, Hdr};
use crate::fdb::{Fdb, Learn, NetId};
use crate::port::PortId;
use crate::stats::{BatchDrops, DropReason};

/// Learns the source of every frame still in flight. A refused learn is
/// counted; the frame itself goes on.
#[inline]
pub fn run(fdb: &Fdb, net: NetId, in_port: PortId, now: u32, hdrs: &[Hdr], drops: &mut BatchDrops) {
    let mut last = None;
    for h in hdrs.iter() {
        if matches!(h.action, Action::Drop(_)) || last == Some(h.src) {
            continue;
        }
        last = Some(h.src);
        match fdb.learn_key(fdb.key(net, h.src), in_port, now) {
            Learn::Limit => drops.add(DropReason::LearnLimit),
            Learn::Full => drops.add(DropReason::LearnTableFull),
            Learn::Moved { from } => {
                tracing::debug!(mac = %h.src, from, to = in_port, "MAC moved");
            }
            Learn::Refreshed | Learn::Learned | Learn::Static => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::PortStats;
    use crate::wire::mac::Mac;

    fn hdr(src: u64) -> Hdr {
        Hdr {
            dst: Mac(0x0200_0000_00ff),
            src: Mac(src),
            action: Action::Flood,
        }
    }

    #[test]
    fn sources_are_learned_on_the_ingress_and_the_limit_is_counted() {
        let fdb = Fdb::new(1024);
        fdb.set_limit(3, 2);
        let stats = PortStats::default();
        let mut drops = BatchDrops::default();
        let mut hdrs = vec![
            hdr(0x0200_0000_0001),
            hdr(0x0200_0000_0001),
            hdr(0x0200_0000_0002),
            hdr(0x0200_0000_0003),
        ];
        hdrs.push(Hdr {
            action: Action::Drop(DropReason::Runt),
            ..hdr(0x0200_0000_0009)
        });
        run(&fdb, 3, 5, 100, &hdrs, &mut drops);
        drops.flush(&stats);
        assert_eq!(fdb.lookup(3, Mac(0x0200_0000_0001)), Some(5));
        assert_eq!(fdb.lookup(3, Mac(0x0200_0000_0002)), Some(5));
        assert_eq!(fdb.lookup(3, Mac(0x0200_0000_0003)), None, "over the limit");
        assert_eq!(stats.drops_of(DropReason::LearnLimit), 1);
        assert_eq!(
            fdb.lookup(3, Mac(0x0200_0000_0009)),
            None,
            "a dropped frame teaches nothing"
        );
        assert_eq!(fdb.lookup(4, Mac(0x0200_0000_0001)), None, "per network");
        // The MAC moves with its sender.
        run(&fdb, 3, 6, 101, &hdrs[..1], &mut drops);
        assert_eq!(fdb.lookup(3, Mac(0x0200_0000_0001)), Some(6));
    }
}
