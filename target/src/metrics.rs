//! Prometheus metrics: `[node] metrics = "127.0.0.1:9420"` serves
//! `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes
//! natively), encoded by the `prometheus-client` crate.
//!
//! The I/O path takes no lock and makes no allocation for metrics. Each poll
//! group (one reactor) owns a `GroupMetrics`: per namespace and direction a
//! few atomic counters and a fixed log2 latency histogram, written only by
//! that reactor (so a plain load and store, no read-modify-write, suffices:
//! one writer per cell), read by the scrape thread. Counters a reactor
//! already keeps in its `TransportStats` (protocol errors, connections) are
//! copied into atomics on its tick. Everything else — ANA states, connected
//! controllers, staging ring occupancy — is read from the shared state at
//! scrape time by `NodeCollector`, a `prometheus_client` `Collector`.
//!
//! Exported (every name is prefixed `tandem_`):
//! - `namespace_io_completed_total`, `namespace_io_errors_total`,
//!   `namespace_io_bytes_total` and the histogram
//!   `namespace_io_latency_seconds` {subsystem, nsid, op="read"|"write"}:
//!   reads and writes completed, from command capsule received to response
//!   sent; bytes count successful commands only, errors count failed ones.
//! - `staging_ring_used_bytes`, `staging_ring_capacity_bytes`,
//!   `staging_records_staged`, `staging_flushed_records_total`,
//!   `staging_flushed_bytes_total`, `staging_medium_failures_total`,
//!   `staging_ring_full_total` {subsystem, nsid}: ring occupancy, and what
//!   the flusher wrote durably to the medium (its rate is the flusher rate).
//! - `ana_state` {port, group, state}: 1 for the group's current state
//!   through the port, 0 for the other four states (the usual way to export
//!   an enum, so `tandem_ana_state{state="optimized"} == 1` selects paths).
//! - `controllers_connected` {subsystem}; `connections_accepted_total`,
//!   `connections_closed_total`.
//! - `protocol_errors_total` {kind}: C2HTermReqs sent by their FES
//!   (`invalid_header_field`, `pdu_sequence`, `header_digest`,
//!   `data_out_of_range`, `limit_exceeded`, `unsupported_parameter`,
//!   `term_req_other`), `data_digest` errors, `host_term_req` (H2CTermReqs
//!   received) and `connect_refused`.
//!
//! Mirror lag, link round-trip, takeovers and givebacks come with the pair;
//! until it exists they are not exported at all (no zeros standing in).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tandem_nvmf::spec::log::AnaState;
use tandem_nvmf::tcp::fes;
use tracing::{info, warn};

use crate::ctrl::TargetState;
use crate::nvmf_rpc::ana_state_name;
use crate::transport::media::StagingStatus;
use crate::transport::tcp::TransportStats;

/// Latency buckets: bucket `i` counts completions of at most 2^i µs, for
/// i in 0..LATENCY_BUCKETS-1 (1 µs .. 4.2 s); the last one counts the rest.
pub const LATENCY_BUCKETS: usize = 24;

/// One direction (reads or writes) of one namespace on one reactor.
#[derive(Debug, Default)]
pub struct OpStats {
    completed: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    latency_ns_sum: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS],
}

/// Adds to a counter that only one thread writes: no locked instruction.
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

/// The bucket of a latency: the smallest i with latency <= 2^i µs.
fn latency_bucket(latency_ns: u64) -> usize {
    let us = latency_ns.div_ceil(1000);
    let i = if us <= 1 { 0 } else { (64 - (us - 1).leading_zeros()) as usize };
    i.min(LATENCY_BUCKETS - 1)
}

impl OpStats {
    fn record(&self, succeeded: bool, bytes: u64, latency_ns: u64) {
        if succeeded {
            bump(&self.completed, 1);
            bump(&self.bytes, bytes);
        } else {
            bump(&self.errors, 1);
        }
        bump(&self.latency_ns_sum, latency_ns);
        bump(&self.latency_buckets[latency_bucket(latency_ns)], 1);
    }
}

/// Reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read = 0,
    Write = 1,
}

/// Protocol error kinds, the label values of `protocol_errors_total`.
const PROTOCOL_KINDS: [&str; 10] = [
    "invalid_header_field",
    "pdu_sequence",
    "header_digest",
    "data_out_of_range",
    "limit_exceeded",
    "unsupported_parameter",
    "term_req_other",
    "data_digest",
    "host_term_req",
    "connect_refused",
];

/// The metrics one poll group (one reactor) writes.
#[derive(Debug)]
pub struct GroupMetrics {
    /// `[subsystem][namespace][op]`, indexed as the poll group's media (the
    /// order of `TargetState::nvm_subsystems` and their namespaces).
    namespaces: Vec<Vec<[OpStats; 2]>>,
    protocol_errors: [AtomicU64; PROTOCOL_KINDS.len()],
    connections_accepted: AtomicU64,
    connections_closed: AtomicU64,
}

impl GroupMetrics {
    pub fn new(target: &TargetState) -> GroupMetrics {
        GroupMetrics {
            namespaces: target
                .nvm_subsystems()
                .iter()
                .map(|s| s.namespaces.iter().map(|_| Default::default()).collect())
                .collect(),
            protocol_errors: Default::default(),
            connections_accepted: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
        }
    }

    /// Counts one completed read or write. Called by the owning reactor only.
    pub fn record_io(
        &self,
        subsystem: usize,
        namespace: usize,
        op: IoOp,
        succeeded: bool,
        bytes: u64,
        latency: Duration,
    ) {
        if let Some(ns) = self.namespaces.get(subsystem).and_then(|s| s.get(namespace)) {
            let latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
            ns[op as usize].record(succeeded, bytes, latency_ns);
        }
    }

    /// Copies the reactor's own transport counters (on its tick).
    pub fn publish_transport(&self, stats: &TransportStats) {
        let set = |kind: usize, v: u64| self.protocol_errors[kind].store(v, Ordering::Relaxed);
        for (fes_value, kind) in [
            (fes::INVALID_HEADER_FIELD, 0),
            (fes::PDU_SEQUENCE_ERROR, 1),
            (fes::HEADER_DIGEST_ERROR, 2),
            (fes::DATA_OUT_OF_RANGE, 3),
            (fes::LIMIT_EXCEEDED, 4),
            (fes::UNSUPPORTED_PARAMETER, 5),
        ] {
            set(kind, stats.term_reqs_by_fes[usize::from(fes_value)]);
        }
        let other = stats.term_reqs_by_fes[0] + stats.term_reqs_by_fes[stats.term_reqs_by_fes.len() - 1];
        set(6, other);
        set(7, stats.data_digest_errors);
        set(8, stats.host_term_reqs);
        set(9, stats.connects_refused);
        self.connections_accepted.store(stats.connections_accepted, Ordering::Relaxed);
        self.connections_closed.store(stats.connections_closed, Ordering::Relaxed);
    }
}

/// A staged namespace's published log status, for the scrape.
#[derive(Debug)]
pub struct StagingSource {
    pub subnqn: String,
    pub nsid: u32,
    pub status: Arc<StagingStatus>,
}

/// Builds every metric at scrape time from the reactors' counters and the
/// node's shared state.
#[derive(Debug)]
pub struct NodeCollector {
    target: Arc<TargetState>,
    groups: Vec<Arc<GroupMetrics>>,
    staging: Vec<StagingSource>,
    /// ANA groups that hold a namespace (the ones `ana_state` reports).
    ana_groups: Vec<u32>,
}

impl NodeCollector {
    pub fn new(
        target: Arc<TargetState>,
        groups: Vec<Arc<GroupMetrics>>,
        staging: Vec<StagingSource>,
    ) -> Self {
        let mut ana_groups: Vec<u32> =
            target.nvm_subsystems().iter().flat_map(|s| s.ana_groups.iter().map(|(g, _)| *g)).collect();
        ana_groups.sort_unstable();
        ana_groups.dedup();
        NodeCollector { target, groups, staging, ana_groups }
    }

    /// The registry a `MetricsServer` encodes.
    pub fn into_registry(self, node_name: &str) -> Registry {
        let mut registry = Registry::with_prefix("tandem");
        let info = prometheus_client::metrics::info::Info::new(vec![
            ("node", node_name.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ]);
        registry.register("node", "The node this target runs as", info);
        registry.register_collector(Box::new(self));
        registry
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter with one unlabelled sample (written `name_total 7`, not `{}`).
fn counter_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn sum(groups: &[Arc<GroupMetrics>], f: impl Fn(&GroupMetrics) -> u64) -> u64 {
    groups.iter().map(|g| f(g)).fold(0, u64::wrapping_add)
}

const ANA_STATES: [AnaState; 5] = [
    AnaState::Optimized,
    AnaState::NonOptimized,
    AnaState::Inaccessible,
    AnaState::PersistentLoss,
    AnaState::Change,
];

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Per namespace and direction, summed over the reactors.
        let mut completed = Vec::new();
        let mut errors = Vec::new();
        let mut bytes = Vec::new();
        let mut latency = Vec::new();
        for (si, s) in self.target.nvm_subsystems().iter().enumerate() {
            for (ni, n) in s.namespaces.iter().enumerate() {
                for (op, op_name) in [(IoOp::Read, "read"), (IoOp::Write, "write")] {
                    let labels: Labels = vec![
                        ("subsystem", s.nqn.clone()),
                        ("nsid", n.nsid.to_string()),
                        ("op", op_name.into()),
                    ];
                    fn cell(g: &GroupMetrics, si: usize, ni: usize, op: IoOp) -> Option<&OpStats> {
                        g.namespaces.get(si).and_then(|x| x.get(ni)).map(|x| &x[op as usize])
                    }
                    let read = |f: fn(&OpStats) -> &AtomicU64| {
                        sum(&self.groups, |g| cell(g, si, ni, op).map_or(0, |c| f(c).load(Ordering::Relaxed)))
                    };
                    completed.push((labels.clone(), read(|c| &c.completed)));
                    errors.push((labels.clone(), read(|c| &c.errors)));
                    bytes.push((labels.clone(), read(|c| &c.bytes)));
                    let mut buckets = [0u64; LATENCY_BUCKETS];
                    for g in &self.groups {
                        if let Some(c) = cell(g, si, ni, op) {
                            for (b, v) in buckets.iter_mut().zip(&c.latency_buckets) {
                                *b = b.wrapping_add(v.load(Ordering::Relaxed));
                            }
                        }
                    }
                    let sum_s = read(|c| &c.latency_ns_sum) as f64 / 1e9;
                    latency.push((labels, buckets, sum_s));
                }
            }
        }
        counter(
            &mut encoder,
            "namespace_io_completed",
            "Reads and writes completed successfully",
            None,
            &completed,
        )?;
        counter(
            &mut encoder,
            "namespace_io_errors",
            "Reads and writes completed with an error",
            None,
            &errors,
        )?;
        counter(
            &mut encoder,
            "namespace_io",
            "Bytes moved by successful reads and writes",
            Some(&Unit::Bytes),
            &bytes,
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "namespace_io_latency",
                "Read and write latency, command capsule received to response sent",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (labels, buckets, sum_s) in &latency {
                let count = buckets.iter().sum();
                let bounds: Vec<(f64, u64)> = buckets
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let le = if i + 1 == LATENCY_BUCKETS { f64::MAX } else { (1u64 << i) as f64 / 1e6 };
                        (le, *n)
                    })
                    .collect();
                metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(*sum_s, count, &bounds, None)?;
            }
        }

        // Staging rings.
        let ring = |f: &dyn Fn(&StagingStatus) -> u64| -> Vec<(Labels, u64)> {
            self.staging
                .iter()
                .map(|s| (vec![("subsystem", s.subnqn.clone()), ("nsid", s.nsid.to_string())], f(&s.status)))
                .collect()
        };
        let as_gauge = |v: Vec<(Labels, u64)>| -> Vec<(Labels, i64)> {
            v.into_iter().map(|(l, x)| (l, i64::try_from(x).unwrap_or(i64::MAX))).collect()
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "staging_ring_used",
            "Ring bytes held by records not yet on the medium",
            Some(&Unit::Bytes),
            &as_gauge(ring(&|s| load(&s.staged_bytes))),
        )?;
        gauge(
            &mut encoder,
            "staging_ring_capacity",
            "Ring bytes records can use",
            Some(&Unit::Bytes),
            &as_gauge(ring(&|s| load(&s.staged_bytes) + load(&s.free_bytes))),
        )?;
        gauge(
            &mut encoder,
            "staging_records_staged",
            "Acknowledged records not yet on the medium",
            None,
            &as_gauge(ring(&|s| load(&s.staged_records))),
        )?;
        counter(
            &mut encoder,
            "staging_flushed_records",
            "Records the flusher wrote durably to the medium",
            None,
            &ring(&|s| load(&s.flushed_records)),
        )?;
        counter(
            &mut encoder,
            "staging_flushed",
            "Bytes the flusher wrote durably to the medium",
            Some(&Unit::Bytes),
            &ring(&|s| load(&s.flushed_bytes)),
        )?;
        counter(
            &mut encoder,
            "staging_medium_failures",
            "Medium writes or flushes that failed (their records stayed staged)",
            None,
            &ring(&|s| load(&s.medium_failures)),
        )?;
        counter(
            &mut encoder,
            "staging_ring_full",
            "Writes that found the ring full and waited",
            None,
            &ring(&|s| load(&s.ring_full)),
        )?;

        // ANA, controllers, connections, protocol errors.
        let mut ana = Vec::new();
        for p in self.target.ports() {
            for &g in &self.ana_groups {
                let now = p.ana_state(g);
                for st in ANA_STATES {
                    let labels: Labels = vec![
                        ("port", p.id.to_string()),
                        ("group", g.to_string()),
                        ("state", ana_state_name(st).into()),
                    ];
                    ana.push((labels, i64::from(st == now)));
                }
            }
        }
        gauge(
            &mut encoder,
            "ana_state",
            "1 for the current ANA state of a group through a port, 0 for the others",
            None,
            &ana,
        )?;
        let live = self.target.live_controllers();
        let discovery = self.target.subsystem(tandem_nvmf::spec::fabrics::DISCOVERY_NQN);
        let controllers: Vec<(Labels, i64)> = discovery
            .into_iter()
            .chain(self.target.nvm_subsystems().iter())
            .map(|s| {
                let n = live.iter().filter(|c| c.subsystem().nqn == s.nqn).count();
                (vec![("subsystem", s.nqn.clone())], n as i64)
            })
            .collect();
        gauge(&mut encoder, "controllers_connected", "Live controllers", None, &controllers)?;
        counter_one(
            &mut encoder,
            "connections_accepted",
            "TCP connections accepted",
            sum(&self.groups, |g| g.connections_accepted.load(Ordering::Relaxed)),
        )?;
        counter_one(
            &mut encoder,
            "connections_closed",
            "TCP connections closed",
            sum(&self.groups, |g| g.connections_closed.load(Ordering::Relaxed)),
        )?;
        let protocol: Vec<(Labels, u64)> = PROTOCOL_KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                (
                    vec![("kind", (*kind).to_string())],
                    sum(&self.groups, |g| g.protocol_errors[i].load(Ordering::Relaxed)),
                )
            })
            .collect();
        counter(&mut encoder, "protocol_errors", "Protocol errors by kind", None, &protocol)?;
        Ok(())
    }
}

/// Longest HTTP request head read, and how long a client may take.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A minimal HTTP/1.1 server for `GET /metrics`, one connection at a time
/// on its own thread (a scrape is one short request; a client that stalls
/// is cut off after `CLIENT_TIMEOUT`).
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: SocketAddr, registry: Registry) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new().name("tandem-metrics".into()).spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                match stream {
                    Ok(s) => serve_scrape(s, &registry),
                    Err(e) => {
                        warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        info!(%addr, "metrics listening (GET /metrics)");
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes()));
}

fn serve_scrape(mut stream: TcpStream, registry: &Registry) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too long\n",
            );
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target, version) = (words.next(), words.next(), words.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        respond(&mut stream, "400 Bad Request", "text/plain", "bad request line\n");
        return;
    };
    if !version.starts_with("HTTP/1.") {
        respond(&mut stream, "400 Bad Request", "text/plain", "HTTP/1.x only\n");
        return;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        respond(&mut stream, "404 Not Found", "text/plain", "only /metrics is served here\n");
        return;
    }
    if method != "GET" {
        respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n");
        return;
    }
    let mut body = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut body, registry).is_err() {
        respond(&mut stream, "500 Internal Server Error", "text/plain", "encoding failed\n");
        return;
    }
    respond(&mut stream, "200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1_000), 0, "1 µs <= 2^0 µs");
        assert_eq!(latency_bucket(1_001), 1);
        assert_eq!(latency_bucket(2_000), 1);
        assert_eq!(latency_bucket(3_000), 2);
        assert_eq!(latency_bucket(4_000), 2);
        assert_eq!(latency_bucket(100_000), 7, "100 µs <= 128 µs");
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn op_stats_count_successes_bytes_and_errors_apart() {
        let s = OpStats::default();
        s.record(true, 4096, 50_000);
        s.record(true, 8192, 50_000);
        s.record(false, 4096, 3_000);
        assert_eq!(s.completed.load(Ordering::Relaxed), 2);
        assert_eq!(s.bytes.load(Ordering::Relaxed), 12288);
        assert_eq!(s.errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.latency_ns_sum.load(Ordering::Relaxed), 103_000);
        assert_eq!(s.latency_buckets[6].load(Ordering::Relaxed), 2, "50 µs <= 64 µs");
        assert_eq!(s.latency_buckets[2].load(Ordering::Relaxed), 1, "3 µs <= 4 µs");
    }
}
