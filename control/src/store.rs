//! The state directory: what the switch has been told, kept on disk so that
//! a restarted switch (after a crash, an upgrade or a reboot) puts it back.
//!
//! One JSON document, `state.json`, holds the desired state ([`Desired`]).
//! Every change is written to `state.json.tmp`, fsynced, renamed over
//! `state.json` and the directory fsynced: a reader sees the old document
//! or the new one, never half of one. A lock file (`lock`, held with
//! `flock` for the life of the switch) keeps two switches off one directory.
//!
//! A document that does not parse, or that a newer vswitch wrote, stops the
//! start with a message that says what to do; it is never overwritten.
use crate::api::{AttachKind, Proto};
use crate::config::{NetworkConfig, PortKind, UplinkConfig};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The document format this build writes; it reads this one and older.
pub const FORMAT: u32 = 1;
const FILE: &str = "state.json";

/// Everything the switch has been told that outlives its process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// Networks, with the id the data plane knows them by.
    pub networks: Vec<SavedNetwork>,
    /// Interfaces added with `port add` (or the config's `[[ports]]`).
    pub ports: Vec<SavedPort>,
    /// Containers' interfaces made by `attach`.
    pub attachments: Vec<SavedAttachment>,
    /// Published ports.
    pub published: Vec<SavedPublished>,
    /// The uplink.
    pub uplink: Option<SavedUplink>,
    /// Static FDB entries (`fdb add`).
    pub fdb: Vec<SavedFdb>,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedNetwork {
    /// Its definition, with defaults filled in (MTU, gateway).
    pub config: NetworkConfig,
    /// Data plane id.
    pub id: u16,
    /// Named by the config file (a reload may remove it) rather than made
    /// through the API.
    pub from_config: bool,
    /// Port id of its host interface (`vsgw<id>`).
    #[serde(default)]
    pub host_port: Option<u16>,
}

/// A port on an existing interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPort {
    /// Port id.
    pub id: u16,
    /// Network.
    pub network: String,
    /// Interface.
    pub iface: String,
    /// How it is opened.
    pub kind: PortKind,
    /// Worker asked for, if any.
    pub worker: Option<usize>,
    /// From the config file.
    pub from_config: bool,
}

/// A container's interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedAttachment {
    /// Port id.
    pub id: u16,
    /// Network.
    pub network: String,
    /// The container's namespace, as given to `attach`.
    pub netns: String,
    /// Interface name inside it.
    pub ifname: String,
    /// veth or TAP.
    pub kind: AttachKind,
    /// The switch's end: the veth's host end; for a TAP, the TAP itself
    /// (then inside the container as `ifname`).
    pub host_iface: String,
    /// Address from the network's pool (or `--ip`).
    pub ip: Option<std::net::Ipv4Addr>,
    /// The interface's MAC.
    pub mac: String,
    /// Worker it runs on.
    pub worker: usize,
    /// Who made it (a CNI container id).
    #[serde(default)]
    pub owner: Option<String>,
    /// Names it goes by on the network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Made in the switch's namespace for a runtime to move (Docker):
    /// `ifname` is its name there, `netns` the namespace the runtime put
    /// it in (empty until then).
    #[serde(default)]
    pub handoff: bool,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPublished {
    /// Network.
    pub network: String,
    /// TCP or UDP.
    pub proto: Proto,
    /// Port on the host.
    pub host_port: u16,
    /// Host address it is limited to, if any.
    pub host_ip: Option<std::net::Ipv4Addr>,
    /// Container address and port.
    pub target: std::net::SocketAddrV4,
    /// Whether the switch binds the host port (see `Request::Publish`).
    #[serde(default = "crate::api::yes")]
    pub bind_host: bool,
}

/// The uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedUplink {
    /// As given to `uplink add` or the config.
    pub config: UplinkConfig,
    /// From the config file.
    pub from_config: bool,
    /// Its port id.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A static FDB entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedFdb {
    /// Network.
    pub network: String,
    /// MAC.
    pub mac: String,
    /// Local port (interface or NETNS:IFNAME), or …
    pub port: Option<String>,
    /// … remote VTEP.
    pub vtep: Option<String>,
    /// ARP suppression address.
    pub ip: Option<std::net::Ipv4Addr>,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot be made or locked.
    #[error("state directory {dir}: {msg}")]
    Dir {
        /// Directory.
        dir: String,
        /// What went wrong and what to do.
        msg: String,
    },
    /// The document is not readable as a state document.
    #[error(
        "state file {path} is not a vswitch state document ({msg}); it was left as it is. \
         Repair it, or move it aside (mv {path} {path}.bad) to start with no saved state"
    )]
    Corrupt {
        /// File.
        path: String,
        /// Parser message.
        msg: String,
    },
    /// A newer vswitch wrote it.
    #[error(
        "state file {path} has format {found}, newer than this vswitch reads (up to {FORMAT}); \
         run the vswitch that wrote it, or move the file aside to start with no saved state"
    )]
    Newer {
        /// File.
        path: String,
        /// Its format.
        found: u32,
    },
    /// Writing failed.
    #[error("cannot save the switch's state in {path}: {msg}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        msg: String,
    },
}

/// The state directory of a running switch.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held (flock) while the switch runs.
    _lock: nix::fcntl::Flock<std::fs::File>,
    /// What is on disk.
    saved: Option<Desired>,
}

impl Store {
    /// Opens (creating) `dir`, locks it and reads the saved state, if any.
    pub fn open(dir: &Path) -> Result<(Self, Option<Desired>), StoreError> {
        let d = || dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
            dir: d(),
            msg: format!("cannot create it: {e}"),
        })?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| StoreError::Dir {
                dir: d(),
                msg: format!("cannot open its lock file: {e}"),
            })?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| StoreError::Dir {
                dir: d(),
                msg: format!("another vswitch uses it ({e}); give each switch its own --state-dir"),
            })?;
        let path = dir.join(FILE);
        let saved = match std::fs::read_to_string(&path) {
            Ok(text) => Some(parse(&path, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    msg: e.to_string(),
                })
            }
        };
        Ok((
            Self {
                dir: dir.to_path_buf(),
                _lock: lock,
                saved: saved.clone(),
            },
            saved,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory takes a write, before a change is made: a
    /// small file where the state's temporary file goes, written and
    /// removed. Far cheaper than writing the whole state, which a change
    /// writes anyway once made (and takes back if that fails).
    pub fn probe(&self) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let r = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(b"{}\n"));
        let _ = std::fs::remove_file(&tmp);
        r.map_err(|e| StoreError::Write {
            path: self.dir.join(FILE).display().to_string(),
            msg: e.to_string(),
        })
    }

    /// Writes `d` unless it is what is on disk already.
    pub fn save(&mut self, d: &Desired) -> Result<(), StoreError> {
        if self.saved.as_ref() == Some(d) {
            return Ok(());
        }
        let path = self.dir.join(FILE);
        let werr = |msg: String| StoreError::Write {
            path: path.display().to_string(),
            msg,
        };
        let mut doc = d.clone();
        doc.format = FORMAT;
        let text = serde_json::to_string_pretty(&doc).map_err(|e| werr(e.to_string()))?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            let dirf = std::fs::File::open(&self.dir)?;
            nix::unistd::fsync(dirf.as_raw_fd()).map_err(std::io::Error::from)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(e.to_string()));
        }
        self.saved = Some(doc);
        Ok(())
    }
}

fn parse(path: &Path, text: &str) -> Result<Desired, StoreError> {
    let p = || path.display().to_string();
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        path: p(),
        msg: e.to_string(),
    })?;
    let format = v
        .get("format")
        .and_then(|f| f.as_u64())
        .ok_or_else(|| StoreError::Corrupt {
            path: p(),
            msg: "no \"format\" field".into(),
        })?;
    if format > u64::from(FORMAT) {
        return Err(StoreError::Newer {
            path: p(),
            found: format as u32,
        });
    }
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt {
        path: p(),
        msg: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vsstore-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sample() -> Desired {
        Desired {
            format: FORMAT,
            networks: vec![SavedNetwork {
                config: toml::from_str("name = \"n1\"\nsubnet = \"10.9.0.0/24\"\n")
                    .expect("network"),
                id: 0,
                from_config: false,
                host_port: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn saves_and_reads_back() {
        let d = tmpdir("rt");
        let (mut s, none) = Store::open(&d).expect("open");
        assert!(none.is_none());
        s.save(&sample()).expect("save");
        drop(s);
        let (_s, back) = Store::open(&d).expect("reopen");
        assert_eq!(back, Some(sample()));
        assert!(!d.join("state.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_switch_is_kept_off_the_directory() {
        let d = tmpdir("lock");
        let (_s, _) = Store::open(&d).expect("open");
        let e = Store::open(&d).expect_err("second open").to_string();
        assert!(e.contains("another vswitch uses it"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_document_is_refused_and_left_alone() {
        let d = tmpdir("bad");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join(FILE), "{\"format\": 1, \"networks\": [tr").expect("write");
        let e = Store::open(&d).expect_err("corrupt").to_string();
        assert!(e.contains("is not a vswitch state document"), "{e}");
        assert!(e.contains("mv "), "{e}");
        assert_eq!(
            std::fs::read_to_string(d.join(FILE)).expect("read"),
            "{\"format\": 1, \"networks\": [tr"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_newer_format_is_refused() {
        let d = tmpdir("new");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join(FILE), "{\"format\": 99, \"mystery\": 1}").expect("write");
        let e = Store::open(&d).expect_err("newer").to_string();
        assert!(e.contains("format 99, newer"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unchanged_state_is_not_rewritten() {
        let d = tmpdir("same");
        let (mut s, _) = Store::open(&d).expect("open");
        s.save(&sample()).expect("save");
        let m1 = std::fs::metadata(d.join(FILE))
            .expect("meta")
            .modified()
            .ok();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.save(&sample()).expect("save again");
        let m2 = std::fs::metadata(d.join(FILE))
            .expect("meta")
            .modified()
            .ok();
        assert_eq!(m1, m2);
        let _ = std::fs::remove_dir_all(&d);
    }
}
