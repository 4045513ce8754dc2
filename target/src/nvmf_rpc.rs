//! The control socket's methods that map onto SPDK's (`nvmf_get_subsystems`,
//! `nvmf_subsystem_get_listeners`, `nvmf_subsystem_get_controllers`,
//! `nvmf_subsystem_listener_set_ana_state`): same names, same params, and
//! answers in SPDK's shape for the fields that apply to Tandem, so scripts
//! written for SPDK's `rpc.py` read them unchanged.
//!
//! One difference follows from Tandem's model: every port serves every
//! subsystem, and an ANA state belongs to a (port, ANA group) pair, shared
//! by every subsystem with a namespace in that group. So
//! `nvmf_subsystem_listener_set_ana_state` changes the group as seen
//! through that port for all those subsystems, and says so in its answer.

use serde_json::{json, Map, Value};
use tandem_nvmf::spec::log::AnaState;
use tracing::info;

use crate::config::{BackendKind, Config, TransportKind};
use crate::ctrl::{Port, Subsystem, TargetState};
use crate::rpc::{self, RpcFault};

/// An ANA state by SPDK's name (`non_optimized`); the hyphenated forms
/// `tandem rpc ana-set` always took (`non-optimized`) are accepted too.
pub fn parse_ana_state(name: &str, field: &str) -> Result<AnaState, RpcFault> {
    match name {
        "optimized" => Ok(AnaState::Optimized),
        "non_optimized" | "non-optimized" => Ok(AnaState::NonOptimized),
        "inaccessible" => Ok(AnaState::Inaccessible),
        "persistent_loss" | "persistent-loss" => Ok(AnaState::PersistentLoss),
        "change" => Ok(AnaState::Change),
        other => Err(RpcFault::invalid_params(format!(
            "params.{field}: {other:?} is not one of optimized, non_optimized, inaccessible, \
             persistent_loss, change"
        ))),
    }
}

/// SPDK's name of an ANA state.
pub fn ana_state_name(state: AnaState) -> &'static str {
    match state {
        AnaState::Optimized => "optimized",
        AnaState::NonOptimized => "non_optimized",
        AnaState::Inaccessible => "inaccessible",
        AnaState::PersistentLoss => "persistent_loss",
        AnaState::Change => "change",
    }
}

fn trtype(port: &Port) -> &'static str {
    match port.transport {
        TransportKind::Tcp => "TCP",
        TransportKind::Rdma => "RDMA",
    }
}

/// A listener's transport ID as SPDK writes it.
fn listen_address(port: &Port) -> Value {
    json!({
        "trtype": trtype(port),
        "adrfam": if port.addr.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": port.addr.ip().to_string(),
        "trsvcid": port.addr.port().to_string(),
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn find_subsystem<'a>(target: &'a TargetState, nqn: &str) -> Result<&'a Subsystem, RpcFault> {
    target
        .subsystem(nqn)
        .map(|s| s.as_ref())
        .ok_or_else(|| RpcFault::invalid_params(format!("params.nqn: no subsystem {nqn:?} on this node")))
}

fn dump_subsystem(target: &TargetState, config: &Config, s: &Subsystem) -> Value {
    let listen: Vec<Value> = target.ports().iter().map(|p| listen_address(p)).collect();
    let hosts: Vec<Value> = s.hosts.iter().map(|h| json!({ "nqn": h })).collect();
    let mut out = json!({
        "nqn": s.nqn,
        "subtype": if s.is_discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listen,
        "allow_any_host": s.allow_any_host,
        "hosts": hosts,
    });
    if !s.is_discovery {
        let ns_config = config.subsystems.iter().find(|c| c.nqn == s.nqn);
        let namespaces: Vec<Value> = s
            .namespaces
            .iter()
            .map(|n| {
                // SPDK names the bdev; Tandem's medium is a file or RAM.
                let medium = ns_config.and_then(|c| c.namespaces.iter().find(|m| m.nsid == n.nsid));
                let name = match medium.map(|m| (m.backend, m.path.as_ref())) {
                    Some((BackendKind::File, Some(p))) => p.display().to_string(),
                    _ => format!("ram{}", n.nsid),
                };
                json!({
                    "nsid": n.nsid,
                    "bdev_name": name,
                    "name": name,
                    "nguid": hex_upper(&n.nguid),
                    "uuid": uuid_text(&n.uuid),
                    "anagrpid": n.ana_group,
                    "block_size": n.block_size_bytes,
                    "num_blocks": n.block_count,
                })
            })
            .collect();
        if let Some(obj) = out.as_object_mut() {
            obj.insert("serial_number".into(), json!(s.serial));
            obj.insert("model_number".into(), json!(s.model));
            obj.insert("ana_reporting".into(), json!(true));
            obj.insert("min_cntlid".into(), json!(config.node.cntlid_min));
            obj.insert("max_cntlid".into(), json!(config.node.cntlid_max));
            obj.insert("namespaces".into(), json!(namespaces));
        }
    }
    out
}

/// `nvmf_get_subsystems {nqn?}`: every subsystem (the discovery subsystem
/// first), or the one named.
pub fn get_subsystems(
    target: &TargetState,
    config: &Config,
    params: &Map<String, Value>,
) -> Result<Value, RpcFault> {
    rpc::check_params(params, &["nqn", "tgt_name"])?;
    let list: Vec<Value> = match rpc::param_str_opt(params, "nqn")? {
        Some(nqn) => vec![dump_subsystem(target, config, find_subsystem(target, nqn)?)],
        None => {
            let discovery = target.subsystem(tandem_nvmf::spec::fabrics::DISCOVERY_NQN);
            discovery
                .into_iter()
                .chain(target.nvm_subsystems().iter())
                .map(|s| dump_subsystem(target, config, s))
                .collect()
        }
    };
    Ok(json!(list))
}

/// `nvmf_subsystem_get_listeners {nqn}`: each port with the ANA state of
/// each of the subsystem's groups through it.
pub fn get_listeners(target: &TargetState, params: &Map<String, Value>) -> Result<Value, RpcFault> {
    rpc::check_params(params, &["nqn", "tgt_name"])?;
    let s = find_subsystem(target, rpc::param_str(params, "nqn")?)?;
    let list: Vec<Value> = target
        .ports()
        .iter()
        .map(|p| {
            let ana: Vec<Value> = s
                .ana_groups
                .iter()
                .map(|(g, _)| json!({ "ana_group": g, "ana_state": ana_state_name(p.ana_state(*g)) }))
                .collect();
            json!({ "address": listen_address(p), "ana_states": ana, "port_id": p.id })
        })
        .collect();
    Ok(json!(list))
}

/// `nvmf_subsystem_get_controllers {nqn}`: the live controllers of a subsystem.
pub fn get_controllers(target: &TargetState, params: &Map<String, Value>) -> Result<Value, RpcFault> {
    rpc::check_params(params, &["nqn", "tgt_name"])?;
    let s = find_subsystem(target, rpc::param_str(params, "nqn")?)?;
    let list: Vec<Value> = target
        .live_controllers()
        .iter()
        .filter(|c| c.subsystem().nqn == s.nqn)
        .map(|c| {
            json!({
                "cntlid": c.cntlid(),
                "hostnqn": c.hostnqn(),
                "hostid": uuid_text(&c.hostid()),
                "num_io_qpairs": c.io_queues_connected(),
                "listen_address": listen_address(c.port()),
            })
        })
        .collect();
    Ok(json!(list))
}

/// `nvmf_subsystem_listener_set_ana_state {nqn, listen_address, ana_state,
/// anagrpid?}`: sets the state of one of the subsystem's groups (all of them
/// without `anagrpid`) as seen through the port at `listen_address`. Hosts
/// get an ANA change notice. Answers `true`, as SPDK does.
pub fn listener_set_ana_state(
    target: &TargetState,
    params: &Map<String, Value>,
    allowed: &dyn Fn(u32, AnaState) -> Result<(), RpcFault>,
) -> Result<Value, RpcFault> {
    rpc::check_params(params, &["nqn", "listen_address", "ana_state", "anagrpid", "tgt_name"])?;
    let s = find_subsystem(target, rpc::param_str(params, "nqn")?)?;
    if s.is_discovery {
        return Err(RpcFault::invalid_params("params.nqn: the discovery subsystem has no ANA groups"));
    }
    let addr = rpc::param_object(params, "listen_address")?;
    let known = ["trtype", "adrfam", "traddr", "trsvcid"];
    if let Some(k) = addr.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(RpcFault::invalid_params(format!("params.listen_address.{k}: unknown parameter")));
    }
    let text = |k: &str| {
        addr.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| RpcFault::invalid_params(format!("params.listen_address.{k}: expected a string")))
    };
    let (traddr, trsvcid) = (text("traddr")?, text("trsvcid")?);
    let port = target
        .ports()
        .iter()
        .find(|p| p.addr.ip().to_string() == traddr && p.addr.port().to_string() == trsvcid)
        .ok_or_else(|| {
            RpcFault::invalid_params(format!(
                "params.listen_address: no local listener at {traddr} port {trsvcid}"
            ))
        })?;
    if let Some(t) = addr.get("trtype") {
        if !t.as_str().is_some_and(|t| t.eq_ignore_ascii_case(trtype(port))) {
            return Err(RpcFault::invalid_params(format!(
                "params.listen_address.trtype: the listener at {traddr} port {trsvcid} is {}",
                trtype(port)
            )));
        }
    }
    let state = parse_ana_state(rpc::param_str(params, "ana_state")?, "ana_state")?;
    let groups: Vec<u32> = match rpc::param_u64_opt(params, "anagrpid")? {
        Some(g) => {
            let g = s.ana_groups.iter().map(|(g, _)| *g).find(|id| u64::from(*id) == g).ok_or_else(|| {
                RpcFault::invalid_params(format!("params.anagrpid: subsystem {} has no ANA group {g}", s.nqn))
            })?;
            vec![g]
        }
        None => s.ana_groups.iter().map(|(g, _)| *g).collect(),
    };
    // Every group is checked before any changes.
    for &g in &groups {
        allowed(g, state)?;
    }
    for &g in &groups {
        if !target.set_ana_state(Some(port.id), g, state) {
            return Err(RpcFault::new(rpc::code::INTERNAL_ERROR, format!("ANA group {g}: state not set")));
        }
        info!(port = port.id, group = g, ?state, "ANA state changed by rpc");
    }
    Ok(json!(true))
}
