//! vswitch as Docker's network driver: libnetwork's remote `NetworkDriver`
//! API (JSON over HTTP on a Unix socket), served by `vswitch run
//! --docker-plugin` on `/run/docker/plugins/vswitch.sock`, where dockerd
//! finds plugins by name (`docker network create -d vswitch`).
//!
//! The driver keeps nothing of its own: it turns each call into management
//! requests, and finds Docker's networks and endpoints again by the ids the
//! switch records as their owners. How the calls map:
//!
//! | Docker calls | the switch does |
//! | --- | --- |
//! | `CreateNetwork` (pool, gateway, options) | `network create`, owned by the network id |
//! | `CreateEndpoint` (Docker's address) | a TAP or veth made in the switch's namespace, attached (handoff) |
//! | `Join` (sandbox key) | answers the interface's name; Docker moves it into the container and configures it |
//! | `ProgramExternalConnectivity` (port map) | `publish` of each mapping |
//! | `RevokeExternalConnectivity` | `unpublish` of the endpoint's ports |
//! | `DeleteEndpoint` | detach: the port, its address, its flows and the interface |
//! | `DeleteNetwork` | `network rm` |
//!
//! Protocol: <https://github.com/moby/moby/blob/master/libnetwork/docs/remote.md>.
use crate::api::{
    AttachKind, Attached, NetworkDetail, NetworkInfo, PortInfo, Proto, PublishedPort, Request,
    Response,
};
use crate::config::{Driver, NetworkConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Where dockerd looks for the plugin named `vswitch`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/vswitch.sock";
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// A call that failed: its message goes back to Docker as `Err`.
#[derive(Debug, PartialEq)]
pub struct DriverError(pub String);

type Answer = Result<Value, DriverError>;

fn fail<T>(msg: impl Into<String>) -> Result<T, DriverError> {
    Err(DriverError(msg.into()))
}

/// Serves the driver API on `path` until the process ends; each call is
/// answered through `call` (the control thread).
pub fn serve(
    path: &Path,
    call: impl Fn(Request) -> Response + Send + 'static,
) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "cannot make {} for Docker's plugin socket: {e}; give another --docker-plugin-socket",
                dir.display()
            )
        })?;
    }
    // A socket left by an earlier switch process.
    let _ = std::fs::remove_file(path);
    let server = tiny_http::Server::http_unix(path).map_err(|e| {
        format!(
            "cannot serve Docker's plugin API on {}: {e} (is another switch serving it? \
             move it with --docker-plugin-socket)",
            path.display()
        )
    })?;
    let driver = DockerDriver { call };
    std::thread::Builder::new()
        .name("vswitch-docker".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let method = req.url().trim_start_matches('/').to_string();
                let (status, answer) = driver.handle(&method, &body);
                let header = tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                    .expect("a valid header");
                let resp = tiny_http::Response::from_string(answer.to_string())
                    .with_status_code(status)
                    .with_header(header);
                let _ = req.respond(resp);
            }
        })
        .map_err(|e| e.to_string())?;
    tracing::info!(socket = %path.display(), "serving Docker's network driver API");
    Ok(())
}

/// The driver: every call becomes management requests through `call`.
struct DockerDriver<F> {
    call: F,
}

// The calls' bodies (libnetwork's drivers/remote/api).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: Map<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(default, rename = "IPv6Data")]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkCall {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointCall {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<EndpointInterface>,
    #[serde(default)]
    sandbox_key: String,
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

/// One entry of `com.docker.network.portmap`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    proto: u8,
    port: u16,
    #[serde(default, rename = "HostIP")]
    host_ip: String,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

const GENERIC: &str = "com.docker.network.generic";
const INTERNAL: &str = "com.docker.network.internal";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const PORTMAP: &str = "com.docker.network.portmap";
const MTU: &str = "com.docker.network.driver.mtu";
const ICC: &str = "com.docker.network.bridge.enable_icc";
/// The driver's own options (`docker network create -o vswitch.KEY=VALUE`).
const OPTIONS: [&str; 3] = ["vswitch.name", "vswitch.vni", "vswitch.kind"];

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DriverError> {
    serde_json::from_slice(body).map_err(|e| DriverError(format!("cannot decode the call: {e}")))
}

impl<F: Fn(Request) -> Response> DockerDriver<F> {
    /// Answers one call: an HTTP status and the JSON body.
    fn handle(&self, method: &str, body: &[u8]) -> (u16, Value) {
        let answer = match method {
            "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver"] })),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
            }
            "NetworkDriver.CreateNetwork" => decode(body).and_then(|c| self.create_network(c)),
            "NetworkDriver.DeleteNetwork" => decode(body).and_then(|c| self.delete_network(c)),
            "NetworkDriver.CreateEndpoint" => decode(body).and_then(|c| self.create_endpoint(c)),
            "NetworkDriver.Join" => decode(body).and_then(|c| self.join(c)),
            "NetworkDriver.ProgramExternalConnectivity" => {
                decode(body).and_then(|c| self.program_external(c))
            }
            "NetworkDriver.RevokeExternalConnectivity" => {
                decode(body).and_then(|c| self.revoke_external(c))
            }
            "NetworkDriver.DeleteEndpoint" => decode(body).and_then(|c| self.delete_endpoint(c)),
            "NetworkDriver.EndpointOperInfo" => decode(body).and_then(|c| self.endpoint_info(c)),
            // Nothing to do: Docker moves the interface out of the
            // container itself.
            "NetworkDriver.Leave"
            | "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.FreeNetwork" => Ok(json!({})),
            "NetworkDriver.AllocateNetwork" => Ok(json!({ "Options": {} })),
            _ => {
                return (
                    404,
                    json!({ "Err": format!("vswitch does not implement {method}") }),
                )
            }
        };
        match answer {
            Ok(v) => (200, v),
            Err(DriverError(e)) => {
                tracing::warn!(call = method, error = %e, "Docker driver call refused");
                (200, json!({ "Err": e }))
            }
        }
    }

    /// One management request; a refusal becomes the call's error.
    fn ask(&self, req: Request) -> Result<Value, DriverError> {
        let r = (self.call)(req);
        if r.ok {
            Ok(r.data)
        } else {
            fail(r.error.unwrap_or_else(|| "the switch refused".into()))
        }
    }

    fn ask_as<T: DeserializeOwned>(&self, req: Request) -> Result<T, DriverError> {
        serde_json::from_value(self.ask(req)?)
            .map_err(|e| DriverError(format!("unexpected answer from the switch: {e}")))
    }

    /// The switch's network that Docker network `nid` is.
    fn network(&self, nid: &str) -> Result<Option<NetworkInfo>, DriverError> {
        let nets: Vec<NetworkInfo> = self.ask_as(Request::NetworkLs)?;
        Ok(nets
            .into_iter()
            .find(|n| n.config.owner.as_deref() == Some(nid)))
    }

    fn network_or_fail(&self, nid: &str) -> Result<NetworkInfo, DriverError> {
        self.network(nid)?.ok_or_else(|| {
            DriverError(format!(
                "the switch has no network for Docker network {nid} (was its state directory removed?); \
                 remove it with `docker network rm` and create it again"
            ))
        })
    }

    /// The port of endpoint `eid`.
    fn endpoint(&self, eid: &str) -> Result<Option<PortInfo>, DriverError> {
        let ports: Vec<PortInfo> = self.ask_as(Request::PortLs)?;
        Ok(ports.into_iter().find(|p| p.owner.as_deref() == Some(eid)))
    }

    fn inspect(&self, name: &str) -> Result<NetworkDetail, DriverError> {
        self.ask_as(Request::NetworkInspect {
            name: name.to_string(),
        })
    }

    /// Endpoint `eid`'s address on `detail`'s network.
    fn endpoint_ip(detail: &NetworkDetail, eid: &str) -> Option<String> {
        detail
            .containers
            .iter()
            .find(|c| c.owner.as_deref() == Some(eid))
            .map(|c| c.ip.clone())
    }

    fn create_network(&self, c: CreateNetwork) -> Answer {
        if self.network(&c.network_id)?.is_some() {
            return Ok(json!({}));
        }
        let cfg = network_config(&c)?;
        self.ask(Request::NetworkCreate(cfg))?;
        Ok(json!({}))
    }

    fn delete_network(&self, c: NetworkCall) -> Answer {
        if let Some(n) = self.network(&c.network_id)? {
            self.ask(Request::NetworkRm {
                name: n.config.name,
            })?;
        }
        Ok(json!({}))
    }

    fn create_endpoint(&self, c: EndpointCall) -> Answer {
        let net = self.network_or_fail(&c.network_id)?;
        let iface = c.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return fail("vswitch networks carry no IPv6 yet: create the network without --ipv6");
        }
        let given_mac = !iface.mac_address.is_empty();
        // A retried call finds the endpoint made.
        let mac = match self.endpoint(&c.endpoint_id)? {
            Some(_) => None,
            None => {
                let made: Attached = self.ask_as(Request::AttachHandoff {
                    network: net.config.name.clone(),
                    kind: net.config.attach_kind.unwrap_or(AttachKind::Tap),
                    ip: Some(iface.address).filter(|a| !a.is_empty()),
                    mac: given_mac.then_some(iface.mac_address),
                    owner: c.endpoint_id.clone(),
                    aliases: Vec::new(),
                })?;
                Some(made.mac)
            }
        };
        // Docker refuses a MAC it gave being answered again.
        Ok(match mac {
            Some(m) if !given_mac => json!({ "Interface": { "MacAddress": m } }),
            _ => json!({}),
        })
    }

    fn join(&self, c: EndpointCall) -> Answer {
        let net = self.network_or_fail(&c.network_id)?;
        let Some(port) = self.endpoint(&c.endpoint_id)? else {
            return fail(format!("the switch has no endpoint {}", c.endpoint_id));
        };
        let Some(src) = port.handoff else {
            return fail(format!(
                "endpoint {} is not an interface Docker can move",
                c.endpoint_id
            ));
        };
        if !c.sandbox_key.is_empty() {
            self.ask(Request::AttachJoined {
                owner: c.endpoint_id.clone(),
                netns: c.sandbox_key.clone(),
            })?;
        }
        let mut answer = json!({ "InterfaceName": { "SrcName": src, "DstPrefix": "eth" } });
        // An internal network gives no way out: no default route through it.
        if let (false, Some(g)) = (net.config.internal, net.config.gateway.as_ref()) {
            answer["Gateway"] = json!(g);
        }
        Ok(answer)
    }

    fn program_external(&self, c: EndpointCall) -> Answer {
        let net = self.network_or_fail(&c.network_id)?;
        let maps: Vec<PortBinding> = match c.options.as_ref().and_then(|o| o.get(PORTMAP)) {
            Some(v) if !v.is_null() => serde_json::from_value(v.clone())
                .map_err(|e| DriverError(format!("cannot decode {PORTMAP}: {e}")))?,
            _ => Vec::new(),
        };
        if maps.is_empty() {
            return Ok(json!({}));
        }
        if net.config.internal {
            tracing::warn!(network = %net.config.name, "an internal network publishes no ports; the container's port mappings are ignored");
            return Ok(json!({}));
        }
        let detail = self.inspect(&net.config.name)?;
        let Some(ip) = Self::endpoint_ip(&detail, &c.endpoint_id) else {
            return fail(format!(
                "endpoint {} has no address on the switch",
                c.endpoint_id
            ));
        };
        let mut made: Vec<(u16, Proto)> = Vec::new();
        for m in &maps {
            let Some(proto) = proto_of(m.proto) else {
                return self.undo(
                    &net.config.name,
                    &made,
                    format!("protocol {} cannot be published (tcp or udp)", m.proto),
                );
            };
            // IPv6 host addresses: the switch publishes on IPv4 only.
            if m.host_ip.contains(':') {
                continue;
            }
            let target = format!("{ip}:{}", m.port);
            // A call repeated: published already.
            if detail.published.iter().any(|p| {
                p.proto == proto
                    && p.target == target
                    && (m.host_port == 0 || p.host_port == m.host_port)
            }) {
                continue;
            }
            let host_port = match (m.host_port, m.host_port_end) {
                (0, _) => None,
                (a, b) if b > a => Some(format!("{a}-{b}")),
                (a, _) => Some(a.to_string()),
            };
            let r = self.ask_as::<PublishedPort>(Request::Publish {
                network: net.config.name.clone(),
                target,
                host_port,
                proto,
                host_ip: Some(m.host_ip.clone()).filter(|h| !h.is_empty() && h != "0.0.0.0"),
                bind_host: true,
            });
            match r {
                Ok(p) => made.push((p.host_port, proto)),
                Err(DriverError(e)) => return self.undo(&net.config.name, &made, e),
            }
        }
        Ok(json!({}))
    }

    /// Withdraws the ports published so far, then fails with `why`.
    fn undo(&self, network: &str, made: &[(u16, Proto)], why: String) -> Answer {
        for (host_port, proto) in made {
            let _ = self.ask(Request::Unpublish {
                network: network.to_string(),
                host_port: *host_port,
                proto: *proto,
            });
        }
        fail(why)
    }

    fn revoke_external(&self, c: EndpointCall) -> Answer {
        let Some(net) = self.network(&c.network_id)? else {
            return Ok(json!({}));
        };
        let detail = self.inspect(&net.config.name)?;
        let Some(ip) = Self::endpoint_ip(&detail, &c.endpoint_id) else {
            return Ok(json!({}));
        };
        for p in &detail.published {
            if p.target.split(':').next() == Some(ip.as_str()) {
                self.ask(Request::Unpublish {
                    network: net.config.name.clone(),
                    host_port: p.host_port,
                    proto: p.proto,
                })?;
            }
        }
        Ok(json!({}))
    }

    fn delete_endpoint(&self, c: EndpointCall) -> Answer {
        self.ask(Request::DetachOwner {
            owner: c.endpoint_id,
        })?;
        Ok(json!({}))
    }

    /// What `docker inspect` shows of the endpoint: its published ports.
    fn endpoint_info(&self, c: EndpointCall) -> Answer {
        let Some(net) = self.network(&c.network_id)? else {
            return Ok(json!({ "Value": {} }));
        };
        let detail = self.inspect(&net.config.name)?;
        let ip = Self::endpoint_ip(&detail, &c.endpoint_id);
        let ports: Vec<Value> = detail
            .published
            .iter()
            .filter_map(|p| {
                let (tip, tport) = p.target.split_once(':')?;
                (Some(tip) == ip.as_deref()).then(|| {
                    json!({
                        "Proto": p.proto.number(),
                        "IP": tip,
                        "Port": tport.parse::<u16>().unwrap_or(0),
                        "HostIP": p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                        "HostPort": p.host_port,
                    })
                })
            })
            .collect();
        Ok(json!({ "Value": { PORTMAP: ports } }))
    }
}

fn proto_of(n: u8) -> Option<Proto> {
    match n {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        _ => None,
    }
}

/// The switch's network for a `CreateNetwork` call: Docker's pool and
/// gateway, `--internal`, the MTU, ICC, and the driver's own options.
fn network_config(c: &CreateNetwork) -> Result<NetworkConfig, DriverError> {
    if c.options.get(ENABLE_IPV6).and_then(Value::as_bool) == Some(true)
        || c.ipv6_data.as_ref().is_some_and(|d| !d.is_empty())
    {
        return fail("vswitch networks carry no IPv6 yet: create the network without --ipv6");
    }
    let generic = c.options.get(GENERIC).and_then(Value::as_object);
    let opt = |k: &str| -> Option<String> {
        generic?.get(k).map(|v| match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    };
    if let Some(g) = generic {
        if let Some(k) = g
            .keys()
            .find(|k| k.starts_with("vswitch.") && !OPTIONS.contains(&k.as_str()))
        {
            return fail(format!(
                "unknown option {k:?}; the vswitch driver takes {}",
                OPTIONS.join(", ")
            ));
        }
    }
    let short: String = c.network_id.chars().take(12).collect();
    let name = opt("vswitch.name").unwrap_or_else(|| format!("docker-{short}"));
    let mut cfg = NetworkConfig::named(&name);
    cfg.owner = Some(c.network_id.clone());
    cfg.internal = c.options.get(INTERNAL).and_then(Value::as_bool) == Some(true);
    match c.ipv4_data.as_deref().unwrap_or_default() {
        [] => {}
        [d] => {
            cfg.subnet = Some(d.pool.clone()).filter(|p| !p.is_empty());
            cfg.gateway = d
                .gateway
                .split('/')
                .next()
                .filter(|g| !g.is_empty())
                .map(str::to_string);
        }
        _ => return fail("a vswitch network has one IPv4 subnet: give one --subnet"),
    }
    if let Some(m) = opt(MTU) {
        cfg.mtu = m
            .parse()
            .map_err(|_| DriverError(format!("{MTU}={m:?} is not a number")))?;
    }
    if let Some(v) = opt(ICC) {
        cfg.no_icc = match v.as_str() {
            "false" => true,
            "true" => false,
            _ => return fail(format!("{ICC}={v:?} must be true or false")),
        };
    }
    if let Some(v) = opt("vswitch.vni") {
        cfg.driver = Driver::Overlay;
        cfg.vni = Some(
            v.parse()
                .map_err(|_| DriverError(format!("vswitch.vni={v:?} is not a number")))?,
        );
    }
    if let Some(k) = opt("vswitch.kind") {
        cfg.attach_kind = Some(match k.as_str() {
            "tap" => AttachKind::Tap,
            "veth" => AttachKind::Veth,
            "veth-xdp" => AttachKind::VethXdp,
            _ => return fail(format!("vswitch.kind={k:?} must be tap, veth or veth-xdp")),
        });
    }
    crate::config::validate_network(&cfg).map_err(|e| DriverError(e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(options: Value, v4: Value) -> CreateNetwork {
        serde_json::from_value(json!({
            "NetworkID": "0123456789abcdef0123",
            "Options": options,
            "IPv4Data": v4,
        }))
        .unwrap()
    }

    #[test]
    fn a_network_takes_dockers_pool_gateway_and_options() {
        let c = create(
            json!({
                INTERNAL: true,
                GENERIC: { MTU: "1400", ICC: "false", "vswitch.kind": "veth" },
            }),
            json!([{ "AddressSpace": "LocalDefault", "Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24" }]),
        );
        let n = network_config(&c).unwrap();
        assert_eq!(n.name, "docker-0123456789ab");
        assert_eq!(n.owner.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(n.subnet.as_deref(), Some("10.9.0.0/24"));
        assert_eq!(n.gateway.as_deref(), Some("10.9.0.1"));
        assert_eq!(n.mtu, 1400);
        assert!(n.internal && n.no_icc);
        assert_eq!(n.attach_kind, Some(AttachKind::Veth));
    }

    #[test]
    fn an_overlay_and_a_name_come_from_driver_options() {
        let c = create(
            json!({ GENERIC: { "vswitch.vni": "4242", "vswitch.name": "blue" } }),
            json!([{ "Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24" }]),
        );
        let n = network_config(&c).unwrap();
        assert_eq!(
            (n.name.as_str(), n.driver, n.vni),
            ("blue", Driver::Overlay, Some(4242))
        );
    }

    #[test]
    fn what_the_switch_cannot_do_is_refused_with_what_to_change() {
        let pool = json!([{ "Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24" }]);
        let bad = [
            (
                json!({ GENERIC: { "vswitch.colour": "red" } }),
                "unknown option",
            ),
            (
                json!({ GENERIC: { "vswitch.kind": "macvlan" } }),
                "tap, veth or veth-xdp",
            ),
            (json!({ ENABLE_IPV6: true }), "IPv6"),
            (json!({ GENERIC: { MTU: "big" } }), "not a number"),
        ];
        for (opts, why) in bad {
            let e = network_config(&create(opts.clone(), pool.clone())).unwrap_err();
            assert!(e.0.contains(why), "{opts}: {}", e.0);
        }
        let two = json!([{ "Pool": "10.9.0.0/24" }, { "Pool": "10.8.0.0/24" }]);
        assert!(network_config(&create(json!({}), two)).is_err());
    }

    #[test]
    fn unknown_calls_are_not_found_and_bad_bodies_are_errors() {
        let d = DockerDriver {
            call: |_req: Request| Response::error("unused"),
        };
        assert_eq!(d.handle("NetworkDriver.Frobnicate", b"{}").0, 404);
        let (status, v) = d.handle("NetworkDriver.CreateNetwork", b"{not json");
        assert_eq!(status, 200);
        assert!(v["Err"].as_str().unwrap().contains("cannot decode"));
        let (_, v) = d.handle("Plugin.Activate", b"");
        assert_eq!(v["Implements"], json!(["NetworkDriver"]));
    }
}
