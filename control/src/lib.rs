//! vswitch control plane: configuration, the management API, netlink work in
//! container namespaces, and the state that publishes tables to the workers.
pub mod api;
pub mod cni;
pub mod config;
pub mod dns;
pub mod docker;
pub mod host;
pub mod mgmt;
pub mod netns;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub mod uplink;
pub mod workers;
