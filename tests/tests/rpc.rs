//! Claim: a running node's control socket speaks JSON-RPC 2.0 as SPDK's
//! does: SPDK's method names and answer shapes where a method maps
//! (`nvmf_get_subsystems`, `nvmf_subsystem_get_listeners`,
//! `nvmf_subsystem_get_controllers`, `nvmf_subsystem_listener_set_ana_state`),
//! the standard error codes, and bad input answered on a connection that
//! stays usable. `tandem rpc` prints results and exits non-zero on errors.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tandem_nvmf::host::{ConnectOptions, HostController};
use tandem_target::rpc::{self, code};
use tandem_tests::{run_tandem, start_test_node, PortSpec, TEST_SUBNQN};

/// Sends `line` and a newline on `c`, returns the answer line as JSON.
fn exchange(w: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Value {
    w.write_all(line.as_bytes()).expect("send");
    w.write_all(b"\n").expect("send");
    let mut answer = String::new();
    r.read_line(&mut answer).expect("an answer line");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("answer {answer:?} is not JSON: {e}"))
}

fn connection(socket: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    (s.try_clone().expect("clone"), BufReader::new(s))
}

#[test]
fn spdk_methods_answer_in_spdk_shape() {
    let p1 = PortSpec::fresh(1);
    let p2 = PortSpec { group1: "inaccessible", ..PortSpec::fresh(2) };
    let (dir, node) = start_test_node("rpc-spdk", &[p1, p2], &[], true);
    let socket = dir.path.join("rpc.sock");

    let subsystems = rpc::call(&socket, "nvmf_get_subsystems", Value::Null).expect("nvmf_get_subsystems");
    let list = subsystems.as_array().expect("a list of subsystems");
    assert_eq!(list.len(), 2, "the discovery subsystem and the test subsystem: {subsystems}");
    assert_eq!(list[0]["subtype"], "Discovery");
    let s = &list[1];
    assert_eq!(s["nqn"], TEST_SUBNQN);
    assert_eq!(s["subtype"], "NVMe");
    assert_eq!(s["allow_any_host"], true);
    assert_eq!(s["hosts"], json!([]));
    assert_eq!(s["ana_reporting"], true);
    assert_eq!(
        s["listen_addresses"][0],
        json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": p1.addr.port().to_string()})
    );
    let ns = &s["namespaces"][0];
    assert_eq!(ns["nsid"], 1);
    assert_eq!(ns["anagrpid"], 1);
    assert_eq!(ns["nguid"].as_str().map(str::len), Some(32), "{ns}");
    assert_eq!(ns["uuid"].as_str().map(str::len), Some(36), "{ns}");
    let one = rpc::call(&socket, "nvmf_get_subsystems", json!({"nqn": TEST_SUBNQN})).expect("by nqn");
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");

    // A controller shows up with its host NQN and its I/O queue.
    let mut host = HostController::connect(&ConnectOptions::new(&p1.addr.to_string(), TEST_SUBNQN))
        .expect("connect a host");
    let controllers = rpc::call(&socket, "nvmf_subsystem_get_controllers", json!({"nqn": TEST_SUBNQN}))
        .expect("controllers");
    let c = &controllers[0];
    assert_eq!(controllers.as_array().map(Vec::len), Some(1), "{controllers}");
    assert!(c["cntlid"].as_u64().is_some_and(|id| id >= 1), "{c}");
    assert!(c["hostnqn"].as_str().is_some_and(|n| n.starts_with("nqn.")), "{c}");
    assert!(c["num_io_qpairs"].as_u64().is_some_and(|n| n >= 1), "{c}");
    drop(host.take_io_queues());

    // ANA: SPDK's setter, seen through SPDK's listener list and through
    // Tandem's status.
    let listeners = |socket: &Path| {
        rpc::call(socket, "nvmf_subsystem_get_listeners", json!({"nqn": TEST_SUBNQN})).expect("listeners")
    };
    let before = listeners(&socket);
    assert_eq!(before[1]["ana_states"], json!([{"ana_group": 1, "ana_state": "inaccessible"}]), "{before}");
    let address = json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                         "trsvcid": p2.addr.port().to_string()});
    let set = rpc::call(
        &socket,
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": TEST_SUBNQN, "listen_address": address, "ana_state": "non_optimized", "anagrpid": 1}),
    )
    .expect("set ANA state");
    assert_eq!(set, json!(true));
    let after = listeners(&socket);
    assert_eq!(after[1]["ana_states"], json!([{"ana_group": 1, "ana_state": "non_optimized"}]), "{after}");
    assert_eq!(
        after[0]["ana_states"],
        json!([{"ana_group": 1, "ana_state": "optimized"}]),
        "port 1 untouched"
    );
    let status = rpc::call(&socket, "tandem_get_status", Value::Null).expect("status");
    assert_eq!(status["ports"][1]["ana"][0]["state"], "non_optimized", "{status}");

    // Invalid params name the param.
    let err = rpc::call(
        &socket,
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": TEST_SUBNQN, "listen_address": address, "ana_state": "sideways"}),
    )
    .expect_err("a bad state");
    assert_eq!(err.code(), Some(code::INVALID_PARAMS), "{err}");
    assert!(err.to_string().starts_with("params.ana_state:"), "{err}");
    let err = rpc::call(&socket, "nvmf_get_subsystems", json!({"nqn": "nqn.2026-11.io.tandem:none"}))
        .expect_err("an unknown subsystem");
    assert!(err.to_string().starts_with("params.nqn:"), "{err}");
    let methods = rpc::call(&socket, "rpc_get_methods", Value::Null).expect("rpc_get_methods");
    for m in ["nvmf_get_subsystems", "nvmf_subsystem_listener_set_ana_state", "tandem_get_status"] {
        assert!(methods.as_array().is_some_and(|l| l.contains(&json!(m))), "{m} in {methods}");
    }
    drop(node);
}

#[test]
fn bad_input_gets_json_rpc_errors_on_a_connection_that_stays_up() {
    let p1 = PortSpec::fresh(1);
    let (dir, node) = start_test_node("rpc-errors", &[p1], &[], true);
    let socket = dir.path.join("rpc.sock");
    let (mut w, mut r) = connection(&socket);
    let version = r#"{"jsonrpc":"2.0","method":"tandem_get_version","id":1}"#;

    let a = exchange(&mut w, &mut r, version);
    assert!(a["result"]["version"].as_str().is_some_and(|v| v.starts_with("Tandem v")), "{a}");
    assert_eq!(a["id"], 1);
    let a = exchange(&mut w, &mut r, r#"{"method":"status"}"#);
    assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "the old request shape: {a}");
    let a = exchange(&mut w, &mut r, "{not json");
    assert_eq!((a["error"]["code"].clone(), a["id"].clone()), (json!(code::PARSE_ERROR), Value::Null), "{a}");
    let a = exchange(&mut w, &mut r, "[1, 2]");
    assert_eq!(a.as_array().map(Vec::len), Some(2), "a batch of non-requests: {a}");
    assert_eq!(a[0]["error"]["code"], code::INVALID_REQUEST, "{a}");
    let a = exchange(&mut w, &mut r, r#"{"jsonrpc":"2.0","method":"status","id":2}"#);
    assert_eq!(a["error"]["code"], code::METHOD_NOT_FOUND, "{a}");
    let a = exchange(
        &mut w,
        &mut r,
        r#"{"jsonrpc":"2.0","method":"tandem_set_ana_state","params":{"group":1},"id":3}"#,
    );
    assert_eq!(a["error"]["code"], code::INVALID_PARAMS, "{a}");
    assert!(a["error"]["message"].as_str().is_some_and(|m| m.starts_with("params.state")), "{a}");
    // A notification changes the state but is not answered.
    w.write_all(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"tandem_set_ana_state\",\
                  \"params\":{\"group\":1,\"state\":\"change\",\"port\":1}}\n",
    )
    .expect("send");
    let a = exchange(&mut w, &mut r, r#"{"jsonrpc":"2.0","method":"tandem_get_status","id":4}"#);
    assert_eq!(a["id"], 4, "the next answer is the next call's: {a}");
    assert_eq!(a["result"]["ports"][0]["ana"][0]["state"], "change", "{a}");
    let mut big = br#"{"jsonrpc":"2.0","method":"tandem_get_status","params":{"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', rpc::REQUEST_BYTES_MAX));
    big.extend_from_slice(b"\"},\"id\":5}\n");
    w.write_all(&big).expect("send");
    let a = exchange(&mut w, &mut r, version);
    assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "overlong: {a}");
    let mut line = String::new();
    r.read_line(&mut line).expect("the version answer after the overlong line");
    assert!(line.contains("Tandem v"), "{line}");

    // The CLI: results as JSON, errors with their message and a failure status.
    let s = socket.to_string_lossy();
    let (status, out, err) = run_tandem(&["rpc", "-s", &s, "nvmf_get_subsystems"]);
    assert_eq!(status, 0, "{out}{err}");
    let printed: Value = serde_json::from_str(&out).expect("pretty JSON on stdout");
    assert_eq!(printed[1]["nqn"], TEST_SUBNQN);
    let (status, out, err) = run_tandem(&["rpc", "-s", &s, "ana-set", "--group", "1", "--state", "odd"]);
    assert_ne!(status, 0, "an error exits non-zero: {out}");
    assert!(err.contains("params.state") && err.contains("-32602"), "{err}");
    let (status, _, err) = run_tandem(&["rpc", "-s", &s, "no_such_method"]);
    assert_ne!(status, 0);
    assert!(err.contains("-32601"), "{err}");
    drop(node);
}
