//! The XDP program that steers a queue's frames into its AF_XDP socket,
//! loaded with the raw `bpf(2)` syscall: no libbpf, no libxdp dispatcher, no
//! bpffs. The link detaches by itself when its fd closes (process exit too).
//!
//! ```text
//! r2 = *(u32 *)(r1 + 16)          ; ctx->rx_queue_index
//! r1 = map_fd ll                  ; the XSKMAP
//! r3 = XDP_PASS                   ; default action when the slot is empty
//! call bpf_redirect_map
//! exit
//! ```
use crate::IoError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
/// Attach in the driver (native) XDP hook.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// Attach in the generic (SKB) hook.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `union bpf_attr` is at most this large for the commands used here.
type Attr = [u64; 16];

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> Result<libc::c_long, std::io::Error> {
    // SAFETY: `attr` points to a zero-initialised buffer at least as large as
    // the `union bpf_attr` members used; the kernel reads at most `size` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn put_u32(attr: &mut Attr, byte_off: usize, v: u32) {
    let word = &mut attr[byte_off / 8];
    let shift = (byte_off % 8) * 8;
    *word = (*word & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
}

/// An XSKMAP, the program redirecting into it, and its attachment.
#[derive(Debug)]
pub struct XdpRedirect {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// Whether the program runs in native (driver) mode.
    pub native: bool,
}

impl XdpRedirect {
    /// Loads the program on `ifindex`, native mode first, generic as fallback.
    pub fn attach(ifindex: u32, queues: u32) -> Result<Self, IoError> {
        let mut a = Attr::default();
        put_u32(&mut a, 0, BPF_MAP_TYPE_XSKMAP);
        put_u32(&mut a, 4, 4);
        put_u32(&mut a, 8, 4);
        put_u32(&mut a, 12, queues.max(1));
        let map =
            fd_from(bpf(BPF_MAP_CREATE, &mut a).map_err(|e| IoError::errno("create XSKMAP", e))?);
        let prog = [
            insn(0x61, 2, 1, 16, 0), // ldxw r2, [r1+16]
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
            insn(0, 0, 0, 0, 0),
            insn(0xb7, 3, 0, 0, XDP_PASS), // mov r3, XDP_PASS
            insn(0x85, 0, 0, 0, FUNC_REDIRECT_MAP),
            insn(0x95, 0, 0, 0, 0), // exit
        ];
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut a = Attr::default();
        put_u32(&mut a, 0, BPF_PROG_TYPE_XDP);
        put_u32(&mut a, 4, prog.len() as u32);
        a[1] = prog.as_ptr() as u64;
        a[2] = license.as_ptr() as u64;
        put_u32(&mut a, 24, 1);
        put_u32(&mut a, 28, log.len() as u32);
        a[4] = log.as_mut_ptr() as u64;
        put_u32(&mut a, 68, BPF_XDP);
        let prog_fd = match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => fd_from(fd),
            Err(e) => {
                let msg = String::from_utf8_lossy(&log);
                return Err(IoError::errno(
                    format!(
                        "load XDP program (verifier: {})",
                        msg.trim_end_matches('\0').trim()
                    ),
                    e,
                ));
            }
        };
        let mut last = None;
        for (flags, native) in [(XDP_FLAGS_DRV_MODE, true), (XDP_FLAGS_SKB_MODE, false)] {
            let mut a = Attr::default();
            put_u32(&mut a, 0, prog_fd.as_raw_fd() as u32);
            put_u32(&mut a, 4, ifindex);
            put_u32(&mut a, 8, BPF_XDP);
            put_u32(&mut a, 12, flags);
            match bpf(BPF_LINK_CREATE, &mut a) {
                Ok(fd) => {
                    return Ok(Self {
                        map,
                        _prog: prog_fd,
                        _link: fd_from(fd),
                        native,
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL));
        Err(IoError::errno(
            format!("attach XDP to ifindex {ifindex} (EBUSY: another XDP program is attached; remove it with `ip link set dev IF xdp off`)"),
            e,
        ))
    }

    /// Points queue `queue` at socket `xsk_fd`.
    pub fn insert(&self, queue: u32, xsk_fd: RawFd) -> Result<(), IoError> {
        let key = queue;
        let val = xsk_fd as u32;
        let mut a = Attr::default();
        put_u32(&mut a, 0, self.map.as_raw_fd() as u32);
        a[1] = &key as *const u32 as u64;
        a[2] = &val as *const u32 as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut a)
            .map_err(|e| IoError::errno("insert socket into XSKMAP", e))?;
        Ok(())
    }
}
