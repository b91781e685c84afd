//! The management socket: who may connect, one request per line, and limits
//! that keep one client from holding up the others.
//!
//! The socket is `0660`, owned by root and the group given with
//! `--socket-group` (none: root's group, so root only), as Docker's socket is
//! for the `docker` group. Each connection is served by its own thread (at
//! most [`MAX_CLIENTS`] at once); a request line longer than
//! [`MAX_REQUEST`] bytes or a client silent for [`IDLE_TIMEOUT`] gets an
//! error and is disconnected. Every request that changes the switch is
//! logged with the caller's uid and pid (`SO_PEERCRED`).
use crate::api::{Request, Response};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;
/// How long a connection may stay silent.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;

/// Binds the socket at `path` with mode 0660 and group `group` (a name or
/// a number; `None`: root only). Refuses when another switch listens there.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another vswitch is already listening on {}; stop it or pass --socket",
            path.display()
        ));
    }
    let gid = match group {
        None => 0,
        Some(g) => resolve_group(g)?,
    };
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    // Created with no access for others from the start (the mode is set
    // exactly below; the umask only closes the window in between).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = bound.map_err(|e| format!("listen on {}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, Some(0), Some(gid))
        .map_err(|e| format!("set the owner of {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("set the mode of {}: {e}", path.display()))?;
    Ok(l)
}

fn resolve_group(g: &str) -> Result<u32, String> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid.as_raw()),
        Ok(None) => Err(format!(
            "--socket-group {g:?}: no such group (create it with `groupadd {g}` or give a number)"
        )),
        Err(e) => Err(format!("--socket-group {g:?}: {e}")),
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: u32,
    pid: i32,
}

fn peer(c: &UnixStream) -> Option<Peer> {
    getsockopt(c, PeerCredentials).ok().map(|cr| Peer {
        uid: cr.uid(),
        pid: cr.pid(),
    })
}

/// Accepts connections until the listener fails, each on a thread of its
/// own; `handle` answers one request.
pub fn serve<H>(listener: UnixListener, handle: H)
where
    H: Fn(Request) -> Response + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let c = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::SeqCst);
            let _ = reply(
                &mut &c,
                &Response::error(format!(
                    "the switch is serving {MAX_CLIENTS} clients; try again"
                )),
            );
            continue;
        }
        let (h, n) = (handle.clone(), clients.clone());
        let spawned = std::thread::Builder::new()
            .name("vswitch-client".into())
            .spawn(move || {
                if let Err(e) = connection(c, &*h) {
                    tracing::debug!(error = %e, "client connection");
                }
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            clients.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start a client thread");
        }
    }
}

fn connection(c: UnixStream, handle: &dyn Fn(Request) -> Response) -> std::io::Result<()> {
    c.set_read_timeout(Some(IDLE_TIMEOUT))?;
    c.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let who = peer(&c);
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut r)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !line.is_empty() {
                    reply(
                        &mut w,
                        &Response::error(format!(
                            "request not finished within {} s; send one JSON object per line",
                            IDLE_TIMEOUT.as_secs()
                        )),
                    )?;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST {
            tracing::warn!(peer = ?who, "request over {MAX_REQUEST} bytes refused");
            return reply(
                &mut w,
                &Response::error(format!(
                    "request larger than {MAX_REQUEST} bytes; the connection is closed"
                )),
            );
        }
        let resp = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                if req.is_query() {
                    tracing::debug!(?req, "request");
                } else {
                    let (uid, pid) = who.map_or((None, None), |p| (Some(p.uid), Some(p.pid)));
                    tracing::info!(?uid, ?pid, ?req, "request");
                }
                handle(req)
            }
            Err(e) => Response::error(format!("malformed request: {e}")),
        };
        reply(&mut w, &resp)?;
    }
}

fn reply(w: &mut impl Write, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(resp)?;
    out.push(b'\n');
    w.write_all(&out)
}

/// How long a client waits for the switch's answer by default: every
/// request is answered in milliseconds, so a switch that says nothing for
/// this long is stuck, and a client (the CLI, the CNI plugin a runtime waits
/// on) says so instead of hanging with it.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Sends one request to a running switch and waits [`ANSWER_WITHIN`].
pub fn request(socket: &Path, req: &Request) -> Result<Response, String> {
    request_within(socket, req, ANSWER_WITHIN)
}

/// Sends one request to a running switch and waits `limit` for the answer.
pub fn request_within(socket: &Path, req: &Request, limit: Duration) -> Result<Response, String> {
    let c = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach vswitch at {}: {e} (is `vswitch run` running? set --socket or VSWITCH_SOCKET)",
            socket.display()
        )
    })?;
    let mut w = c.try_clone().map_err(|e| e.to_string())?;
    let mut body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    body.push(b'\n');
    w.write_all(&body).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(c)
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "the switch at {} did not answer within {} s: its control thread is stuck or \
             overloaded (see its log); the request may still take effect",
                socket.display(),
                limit.as_secs()
            ),
            _ => e.to_string(),
        })?;
    serde_json::from_str(&line).map_err(|e| format!("bad response from switch: {e}"))
}
