//! vswitch as a CNI plugin (`"type": "vswitch"`): the `vswitch` binary acts
//! as the plugin when `CNI_COMMAND` is set, so installing it is a copy or a
//! link named `vswitch` in the runtime's CNI plugin directory. It talks to
//! the running switch over its management socket.
//!
//! Network configuration (besides `cniVersion`, `name`, `type`):
//! `network` (default: `name`), `socket` (default
//! `/run/vswitch/vswitch.sock`), `kind` (`tap` or `veth`), and, to create
//! the network on first use, `subnet`, `gateway`, `mtu`. Capabilities:
//! `portMappings` (published through the switch's own DNAT, without binding
//! the host port, which a runtime such as podman holds) and `aliases`
//! (recorded on the attachment). `CNI_ARGS` `IP=` and `MAC=` are honoured,
//! and `K8S_POD_NAME=` is recorded as one more alias.
//! Specification: <https://github.com/containernetworking/cni/blob/main/SPEC.md>.
use crate::api::{AttachKind, Attached, NetworkDetail, PortInfo, Proto, Request, Response};
use crate::config::NetworkConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;

/// Versions of the specification this plugin speaks.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
const DEFAULT_SOCKET: &str = "/run/vswitch/vswitch.sock";

/// A CNI error: a well-known code, a message and details.
#[derive(Debug)]
pub struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

// Well-known codes (SPEC.md, "Error").
const INCOMPATIBLE_VERSION: u32 = 1;
const UNKNOWN_CONTAINER: u32 = 3;
const INVALID_ENV: u32 = 4;
const IO_FAILURE: u32 = 5;
const DECODE_FAILURE: u32 = 6;
const INVALID_CONFIG: u32 = 7;
const TRY_LATER: u32 = 11;
const NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: the switch refused the request (its message says why).
const SWITCH_REFUSED: u32 = 100;

/// The network configuration a runtime passes on stdin.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    kind: Option<AttachKind>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    /// GC (1.1): the attachments the runtime still knows.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Vec<ValidAttachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
    /// Network name → names.
    #[serde(default)]
    aliases: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortMapping {
    host_port: u16,
    container_port: u16,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The ADD result (SPEC.md, "Success").
#[derive(Debug, Serialize)]
struct AddResult {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    interfaces: Vec<Value>,
    ips: Vec<Value>,
    routes: Vec<Value>,
    dns: Value,
}

/// Runs the plugin: reads the environment and stdin, writes the result or
/// the error object to stdout. Returns the exit status.
pub fn main() -> std::process::ExitCode {
    let mut input = String::new();
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let read = std::io::stdin().read_to_string(&mut input);
    let conf: Result<NetConf, CniError> = match read {
        Err(e) => Err(fail(
            IO_FAILURE,
            "cannot read the network configuration",
            e.to_string(),
        )),
        Ok(_) if input.trim().is_empty() && cmd == "VERSION" => Ok(NetConf::empty()),
        Ok(_) => serde_json::from_str(&input).map_err(|e| {
            fail(
                DECODE_FAILURE,
                "cannot decode the network configuration",
                e.to_string(),
            )
        }),
    };
    let version = conf
        .as_ref()
        .map(|c| c.cni_version.clone())
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "1.0.0".into());
    let out = conf.and_then(|c| run(&cmd, c));
    match out {
        Ok(Some(v)) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", error_object(&version, &e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error object a runtime reads (SPEC.md, "Error").
fn error_object(version: &str, e: &CniError) -> Value {
    json!({ "cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details })
}

impl NetConf {
    fn empty() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }

    fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }
}

fn env(name: &str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| fail(INVALID_ENV, format!("{name} is not set"), ""))
}

/// `KEY=VALUE;...` from `CNI_ARGS`.
fn cni_arg(key: &str) -> Option<String> {
    std::env::var("CNI_ARGS").ok().and_then(|a| {
        a.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key && !v.is_empty()).then(|| v.to_string())
        })
    })
}

fn run(cmd: &str, conf: NetConf) -> Result<Option<Value>, CniError> {
    if cmd != "VERSION"
        && !conf.cni_version.is_empty()
        && !SUPPORTED.contains(&conf.cni_version.as_str())
    {
        return Err(fail(
            INCOMPATIBLE_VERSION,
            format!("CNI version {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    match cmd {
        "VERSION" => Ok(Some(json!({
            "cniVersion": if conf.cni_version.is_empty() { "1.1.0" } else { conf.cni_version.as_str() },
            "supportedVersions": SUPPORTED,
        }))),
        "ADD" => add(&conf).map(Some),
        "DEL" => del(&conf).map(|_| None),
        "CHECK" => check(&conf).map(|_| None),
        "STATUS" => status(&conf).map(|_| None),
        "GC" => gc(&conf).map(|_| None),
        "" => Err(fail(INVALID_ENV, "CNI_COMMAND is not set", "")),
        other => Err(fail(
            INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
        )),
    }
}

/// The switch does not answer on its socket.
fn unreachable(conf: &NetConf, why: impl Into<String>) -> CniError {
    unreachable_as(TRY_LATER, conf, why)
}

/// [`unreachable`] with another code (`STATUS` answers "not available").
fn unreachable_as(code: u32, conf: &NetConf, why: impl Into<String>) -> CniError {
    fail(
        code,
        format!(
            "vswitch is not running: nothing answers on {} (start it with `vswitch run`)",
            conf.socket().display()
        ),
        why,
    )
}

/// One request to the switch; its refusal becomes a CNI error.
fn call(conf: &NetConf, req: Request) -> Result<Value, CniError> {
    let r: Response =
        crate::mgmt::request(&conf.socket(), &req).map_err(|e| unreachable(conf, e))?;
    if r.ok {
        Ok(r.data)
    } else {
        Err(fail(
            SWITCH_REFUSED,
            r.error.unwrap_or_else(|| "the switch refused".into()),
            format!("{req:?}"),
        ))
    }
}

fn inspect(conf: &NetConf) -> Result<Option<NetworkDetail>, CniError> {
    let r: Response = crate::mgmt::request(
        &conf.socket(),
        &Request::NetworkInspect {
            name: conf.network().to_string(),
        },
    )
    .map_err(|e| unreachable(conf, e))?;
    if !r.ok {
        return Ok(None);
    }
    decode(r.data).map(Some)
}

fn add(conf: &NetConf) -> Result<Value, CniError> {
    let netns = env("CNI_NETNS")?;
    let ifname = env("CNI_IFNAME")?;
    let container = env("CNI_CONTAINERID")?;
    let net = match inspect(conf)? {
        Some(n) => n,
        None => {
            let Some(subnet) = &conf.subnet else {
                return Err(fail(
                    INVALID_CONFIG,
                    format!("vswitch has no network {:?}", conf.network()),
                    "create it (vswitch network create), or give \"subnet\" in the network configuration",
                ));
            };
            let c: NetworkConfig = serde_json::from_value(json!({
                "name": conf.network(),
                "subnet": subnet,
                "gateway": conf.gateway,
                "mtu": conf.mtu.unwrap_or(0),
            }))
            .map_err(|e| fail(INVALID_CONFIG, "bad network settings", e.to_string()))?;
            call(conf, Request::NetworkCreate(c))?;
            inspect(conf)?.ok_or_else(|| fail(IO_FAILURE, "the network vanished", ""))?
        }
    };
    let prefix = net
        .network
        .config
        .subnet
        .as_deref()
        .and_then(|s| s.split_once('/'))
        .map(|(_, p)| p.to_string());
    let ip = cni_arg("IP").map(|ip| match (&prefix, ip.contains('/')) {
        (Some(p), false) => format!("{ip}/{p}"),
        _ => ip,
    });
    let mut aliases = conf
        .runtime_config
        .aliases
        .get(&conf.name)
        .or_else(|| conf.runtime_config.aliases.get(conf.network()))
        .cloned()
        .unwrap_or_default();
    // A pod's name is a name too (Kubernetes and podman pass it).
    if let Some(pod) = cni_arg("K8S_POD_NAME") {
        if !aliases.contains(&pod) {
            aliases.push(pod);
        }
    }
    let data = call(
        conf,
        Request::Attach {
            network: conf.network().to_string(),
            netns: netns.clone(),
            ifname: ifname.clone(),
            kind: conf.kind.unwrap_or(AttachKind::Tap),
            ip,
            mac: cni_arg("MAC"),
            owner: Some(container),
            aliases,
        },
    )?;
    let a: Attached = decode(data)?;
    for m in &conf.runtime_config.port_mappings {
        let proto = match m.protocol.as_deref().unwrap_or("tcp") {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => {
                let _ = del(conf);
                return Err(fail(
                    INVALID_CONFIG,
                    format!("port mapping protocol {other:?} is not supported (tcp, udp)"),
                    "",
                ));
            }
        };
        let Some(ip) = &a.ip else {
            let _ = del(conf);
            return Err(fail(
                INVALID_CONFIG,
                "port mappings need a network with a subnet",
                "",
            ));
        };
        let r = call(
            conf,
            Request::Publish {
                network: conf.network().to_string(),
                target: format!("{ip}:{}", m.container_port),
                host_port: Some(m.host_port.to_string()),
                proto,
                host_ip: m
                    .host_ip
                    .clone()
                    .filter(|h| !h.is_empty() && h != "0.0.0.0"),
                bind_host: false,
            },
        );
        if let Err(e) = r {
            // Leave nothing half-made: the attachment and what it published.
            let _ = del(conf);
            return Err(e);
        }
    }
    Ok(add_result(conf, &ifname, &netns, &a, prefix.as_deref()))
}

/// The `ADD` result in the configuration's version: the interface, its
/// address with the gateway, the default route, and the gateway as the
/// container's nameserver (the switch answers the network's names there;
/// podman writes it into the container's `resolv.conf`).
fn add_result(
    conf: &NetConf,
    ifname: &str,
    netns: &str,
    a: &Attached,
    prefix: Option<&str>,
) -> Value {
    let v4 = conf.cni_version.starts_with("0.");
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(ip) = &a.ip {
        let mut e = json!({
            "address": format!("{ip}/{}", prefix.unwrap_or("32")),
            "interface": 0,
        });
        if let Some(gw) = &a.gateway {
            e["gateway"] = json!(gw);
            routes.push(json!({ "dst": "0.0.0.0/0", "gw": gw }));
        }
        if v4 {
            e["version"] = json!("4");
        }
        ips.push(e);
    }
    json!(AddResult {
        cni_version: if conf.cni_version.is_empty() {
            "1.0.0".into()
        } else {
            conf.cni_version.clone()
        },
        interfaces: vec![json!({ "name": ifname, "mac": a.mac, "sandbox": netns })],
        ips,
        routes,
        dns: match &a.gateway {
            Some(gw) => json!({ "nameservers": [gw] }),
            None => json!({}),
        },
    })
}

/// An answer of the switch as `T`.
fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, CniError> {
    serde_json::from_value(v).map_err(|e| {
        fail(
            IO_FAILURE,
            "unexpected answer from the switch",
            e.to_string(),
        )
    })
}

/// The switch's ports on this configuration's network that `attach` made.
fn attachments(conf: &NetConf) -> Result<Vec<PortInfo>, CniError> {
    let ports: Vec<PortInfo> = decode(call(conf, Request::PortLs)?)?;
    Ok(ports
        .into_iter()
        .filter(|p| p.network == conf.network() && p.attached.is_some())
        .collect())
}

fn detach(conf: &NetConf, ns: &str, ifname: &str) -> Result<(), CniError> {
    call(
        conf,
        Request::Detach {
            network: conf.network().to_string(),
            netns: ns.to_string(),
            ifname: ifname.to_string(),
        },
    )
    .map(|_| ())
}

/// The attachment of this container's interface, if the switch has it.
fn find(conf: &NetConf) -> Result<Option<PortInfo>, CniError> {
    let ifname = env("CNI_IFNAME")?;
    let container = env("CNI_CONTAINERID")?;
    let netns = std::env::var("CNI_NETNS").unwrap_or_default();
    let ports = attachments(conf)?;
    Ok(ports.into_iter().find(|p| {
        p.attached
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .is_some_and(|(ns, i)| {
                i == ifname
                    && (p.owner.as_deref() == Some(&container)
                        || (!netns.is_empty() && ns == netns))
            })
    }))
}

/// DEL: detach (its published ports go with it). Succeeds when the
/// attachment, the namespace or the network is already gone.
fn del(conf: &NetConf) -> Result<(), CniError> {
    let Some(p) = find(conf)? else {
        return Ok(());
    };
    let Some((ns, ifname)) = p.attached.as_deref().and_then(|a| a.rsplit_once(':')) else {
        return Ok(());
    };
    detach(conf, ns, ifname)
}

fn check(conf: &NetConf) -> Result<(), CniError> {
    match find(conf)? {
        Some(p) if p.status == "up" => Ok(()),
        Some(p) => Err(fail(
            IO_FAILURE,
            format!("the interface is {}", p.status),
            "",
        )),
        None => Err(fail(
            UNKNOWN_CONTAINER,
            "the switch has no attachment for this container",
            "",
        )),
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    crate::mgmt::request(&conf.socket(), &Request::NetworkLs)
        .map(|_| ())
        .map_err(|e| unreachable_as(NOT_AVAILABLE, conf, e))
}

/// GC (1.1): detaches what this plugin attached on the network for
/// containers the runtime no longer lists.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let ports = attachments(conf)?;
    for p in &ports {
        let (Some(owner), Some((ns, ifname))) = (
            p.owner.as_deref(),
            p.attached.as_deref().and_then(|a| a.rsplit_once(':')),
        ) else {
            continue;
        };
        let valid = conf
            .valid_attachments
            .iter()
            .any(|v| v.container_id == owner && v.ifname == ifname);
        if !valid {
            detach(conf, ns, ifname)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(v: Value) -> NetConf {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn version_lists_what_it_speaks_and_other_versions_are_refused() {
        let v = run("VERSION", conf(json!({ "cniVersion": "1.0.0" })))
            .unwrap()
            .unwrap();
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(v["cniVersion"], "1.0.0");
        for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
            let e = run(cmd, conf(json!({ "cniVersion": "0.3.1", "name": "n" }))).unwrap_err();
            assert_eq!(e.code, INCOMPATIBLE_VERSION, "{cmd}");
            assert!(e.details.contains("1.1.0"), "{cmd}: {}", e.details);
        }
        let e = run("FROB", conf(json!({ "cniVersion": "1.0.0" }))).unwrap_err();
        assert_eq!(e.code, INVALID_ENV);
    }

    #[test]
    fn errors_are_cni_error_objects() {
        let e = fail(TRY_LATER, "vswitch is not running", "connect: refused");
        assert_eq!(
            error_object("1.0.0", &e),
            json!({ "cniVersion": "1.0.0", "code": 11, "msg": "vswitch is not running", "details": "connect: refused" })
        );
        // An unreachable switch is a "try again later" naming the socket.
        let c =
            conf(json!({ "cniVersion": "1.0.0", "name": "n", "socket": "/nonexistent/vs.sock" }));
        let e = call(&c, Request::NetworkLs).unwrap_err();
        assert_eq!(e.code, TRY_LATER);
        assert!(e.msg.contains("/nonexistent/vs.sock"), "{}", e.msg);
    }

    #[test]
    fn results_are_in_the_configurations_version() {
        let a = Attached {
            port: 3,
            mac: "02:00:00:00:00:05".into(),
            ip: Some("10.1.0.5".into()),
            gateway: Some("10.1.0.1".into()),
            handoff: None,
        };
        let old = add_result(
            &conf(json!({ "cniVersion": "0.4.0", "name": "n" })),
            "eth0",
            "/run/netns/x",
            &a,
            Some("24"),
        );
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][0]["address"], "10.1.0.5/24");
        let new = add_result(
            &conf(json!({ "cniVersion": "1.0.0", "name": "n" })),
            "eth0",
            "/run/netns/x",
            &a,
            Some("24"),
        );
        assert!(new["ips"][0].get("version").is_none(), "{new}");
        assert_eq!(new["dns"], json!({ "nameservers": ["10.1.0.1"] }));
        assert_eq!(
            new["routes"],
            json!([{ "dst": "0.0.0.0/0", "gw": "10.1.0.1" }])
        );
        assert_eq!(
            new["interfaces"],
            json!([{ "name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": "/run/netns/x" }])
        );
    }
}
