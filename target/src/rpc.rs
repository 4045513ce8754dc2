//! The control socket: JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>)
//! over a Unix stream socket, as SPDK's `rpc.py` speaks to SPDK's targets.
//!
//! A request is `{"jsonrpc":"2.0","method":"...","params":{...},"id":N}`
//! with named params (an object; positional params are refused); the answer
//! is `{"jsonrpc":"2.0","result":...,"id":N}` or `{"jsonrpc":"2.0","error":
//! {"code":C,"message":"..."},"id":N}`. A request without an `id` is a
//! notification: it runs and gets no answer. An array is a batch: its
//! answers come back as one array (none at all if it held only
//! notifications). `tandem rpc` is the client; `call` is the library client.
//!
//! Framing: the server reads a stream of JSON values, so a request may end
//! with a newline (one per line, as `tandem rpc` sends them) or not (as
//! SPDK's `rpc.py` sends them, or a last request before EOF). Each answer is
//! one line. Bad input never closes the connection: text that is not JSON
//! gets a Parse error and the server skips to the next newline; a request
//! that grows past `REQUEST_BYTES_MAX` without ending gets an Invalid
//! Request error and is skipped up to its next newline. Blank lines are
//! framing, not requests, and get no answer.
//!
//! Error codes (`code` module): the standard ones of JSON-RPC 2.0. Params
//! that are malformed or name nothing that exists (an unknown subsystem,
//! port or group) are -32602 Invalid params, as SPDK answers them; the
//! message names the param (`params.anagrpid: ...`). SPDK also answers some
//! calls with errno-style codes (-19 for an unknown subsystem in
//! `nvmf_get_subsystems`); Tandem keeps to the standard codes, so a client
//! can tell from the code alone whether the request, the method or a param
//! was wrong. No method needs the application range (-32000..-32099) yet.
//!
//! The server runs on its own threads, off the reactors: it only calls
//! control-path methods.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tracing::{info, warn};

/// The longest request accepted, in bytes (a batch counts as one request).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// JSON-RPC 2.0 error codes.
pub mod code {
    /// The text is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// JSON, but not a request object (or a request too long to read).
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// A param is missing, mistyped or names nothing that exists.
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
}

/// An error answer: a JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcFault {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcFault {
    pub fn new(code: i64, message: impl Into<String>) -> RpcFault {
        RpcFault { code, message: message.into(), data: None }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcFault {
        RpcFault::new(code::INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let (Some(d), Some(obj)) = (&self.data, e.as_object_mut()) {
            obj.insert("data".into(), d.clone());
        }
        e
    }
}

/// What answers RPC methods.
pub trait RpcHandler: Send + Sync {
    /// The methods `handle` knows (`rpc_get_methods` lists them).
    fn methods(&self) -> Vec<&'static str>;
    /// Runs `method` with `params`, always an object (`{}` when the request
    /// had none). An unknown method is `code::METHOD_NOT_FOUND`.
    fn handle(&self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcFault>;
}

#[derive(thiserror::Error, Debug)]
pub enum RpcError {
    #[error("cannot reach the control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad answer from the control socket: {0}")]
    BadAnswer(String),
    /// The node answered with a JSON-RPC error.
    #[error("{message} (JSON-RPC error {code})")]
    Rpc { code: i64, message: String, data: Option<Value> },
}

impl RpcError {
    /// The JSON-RPC error code, if the node answered with an error.
    pub fn code(&self) -> Option<i64> {
        match self {
            RpcError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The server: listening socket and its thread.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Binds `path` (replacing a stale socket file) and serves on a thread.
    pub fn start(path: &Path, handler: Arc<dyn RpcHandler>) -> io::Result<RpcServer> {
        if path.exists() {
            // A socket left by a killed process; refuse to clobber a live one.
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new().name("tandem-rpc".into()).spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let h = handler.clone();
                        let _ = std::thread::Builder::new()
                            .name("tandem-rpc-conn".into())
                            .spawn(move || serve_connection(stream, h.as_ref()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        info!(path = %path.display(), "control socket listening (JSON-RPC 2.0)");
        Ok(RpcServer { path: path.to_path_buf(), stop, thread: Some(thread) })
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the stream parser found at the front of its buffer.
enum Framed {
    /// A whole JSON value and the bytes it took (with leading whitespace).
    Value(Value, usize),
    /// Nothing but whitespace.
    Empty,
    /// The value has not ended yet: read more.
    Incomplete,
    /// Not JSON: the error, to be answered before skipping to a newline.
    Invalid(String),
}

fn frame(buf: &[u8]) -> Framed {
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match stream.next() {
        None => Framed::Empty,
        Some(Ok(v)) => Framed::Value(v, stream.byte_offset()),
        Some(Err(e)) if e.is_eof() => Framed::Incomplete,
        Some(Err(e)) => Framed::Invalid(e.to_string()),
    }
}

/// Serves one client until it closes, its socket fails, or it stays silent
/// for five minutes. Nothing a client sends closes the connection.
fn serve_connection(stream: UnixStream, handler: &dyn RpcHandler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = stream;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    // Dropping bytes up to the next newline (after bad or oversized input).
    let mut skipping = false;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let at_eof = n == 0;
        let mut fresh = &chunk[..n];
        if skipping {
            match fresh.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    skipping = false;
                    fresh = &fresh[i + 1..];
                }
                None => fresh = &[],
            }
        }
        buf.extend_from_slice(fresh);
        let mut answers = Vec::new();
        loop {
            match frame(&buf) {
                Framed::Value(_, used) if used > REQUEST_BYTES_MAX => {
                    // Whole, but only because the last read completed it.
                    buf.drain(..used);
                    answers.push(too_long());
                }
                Framed::Value(v, used) => {
                    buf.drain(..used);
                    if let Some(a) = answer_value(v, handler) {
                        answers.push(a);
                    }
                }
                Framed::Empty => {
                    buf.clear();
                    break;
                }
                Framed::Incomplete if !at_eof && buf.len() <= REQUEST_BYTES_MAX => break,
                Framed::Incomplete if !at_eof => {
                    answers.push(too_long());
                    skipping = skip_line(&mut buf);
                }
                Framed::Incomplete => {
                    answers.push(error_answer(
                        Value::Null,
                        RpcFault::new(code::PARSE_ERROR, "request ends before its JSON value does"),
                    ));
                    buf.clear();
                }
                Framed::Invalid(e) => {
                    answers.push(error_answer(
                        Value::Null,
                        RpcFault::new(code::PARSE_ERROR, format!("request is not JSON: {e}")),
                    ));
                    skipping = skip_line(&mut buf);
                }
            }
        }
        for a in answers {
            let mut out = a.to_string();
            out.push('\n');
            if writer.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
        if at_eof {
            return;
        }
    }
}

/// Drops the bad request at the front of `buf` up to and including the
/// newline that ends it; returns true if there was none (the rest of the line
/// is still to come and must be skipped). Whitespace before the request (the
/// newline of the line before, when reads coalesce) is not its end.
fn skip_line(buf: &mut Vec<u8>) -> bool {
    let start = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
    buf.drain(..start);
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            buf.drain(..=i);
            false
        }
        None => {
            buf.clear();
            true
        }
    }
}

fn too_long() -> Value {
    error_answer(
        Value::Null,
        RpcFault::new(code::INVALID_REQUEST, format!("request longer than {REQUEST_BYTES_MAX} bytes")),
    )
}

fn error_answer(id: Value, fault: RpcFault) -> Value {
    json!({ "jsonrpc": "2.0", "error": fault.to_json(), "id": id })
}

/// The answer to one JSON value read from the socket: a request or a batch.
/// None for a notification, or a batch of notifications only.
fn answer_value(v: Value, handler: &dyn RpcHandler) -> Option<Value> {
    match v {
        Value::Array(items) if items.is_empty() => Some(error_answer(
            Value::Null,
            RpcFault::new(code::INVALID_REQUEST, "an empty batch is not a request"),
        )),
        Value::Array(items) => {
            let answers: Vec<Value> = items.into_iter().filter_map(|r| answer_request(r, handler)).collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        other => answer_request(other, handler),
    }
}

fn answer_request(v: Value, handler: &dyn RpcHandler) -> Option<Value> {
    let Value::Object(mut req) = v else {
        return Some(error_answer(
            Value::Null,
            RpcFault::new(code::INVALID_REQUEST, "a request is a JSON object"),
        ));
    };
    // The id is echoed only when it is one a client may send.
    let id = match req.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Some(error_answer(
                Value::Null,
                RpcFault::new(code::INVALID_REQUEST, "request.id: expected a string, a number or null"),
            ))
        }
    };
    let invalid = |msg: &str| {
        Some(error_answer(id.clone().unwrap_or(Value::Null), RpcFault::new(code::INVALID_REQUEST, msg)))
    };
    if req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("request.jsonrpc: expected \"2.0\"");
    }
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return invalid("request.method: expected a string");
    };
    let empty = Map::new();
    let result = match req.get("params") {
        None => dispatch(handler, method, &empty),
        Some(Value::Object(p)) => dispatch(handler, method, p),
        Some(Value::Array(_)) => Err(RpcFault::invalid_params(
            "params: expected an object (named params); positional params are not supported",
        )),
        Some(_) => return invalid("request.params: expected an object"),
    };
    // A notification runs but is not answered, even when it fails.
    let id = id?;
    Some(match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "result": result, "id": id }),
        Err(fault) => error_answer(id, fault),
    })
}

/// The method the server answers itself, whatever the handler.
const RPC_GET_METHODS: &str = "rpc_get_methods";

fn dispatch(handler: &dyn RpcHandler, method: &str, params: &Map<String, Value>) -> Result<Value, RpcFault> {
    if method == RPC_GET_METHODS {
        check_params(params, &[])?;
        let mut names = vec![RPC_GET_METHODS];
        names.extend(handler.methods());
        names.sort_unstable();
        return Ok(json!(names));
    }
    handler.handle(method, params)
}

/// The error for a method no handler knows.
pub fn method_not_found(method: &str, known: &[&str]) -> RpcFault {
    RpcFault::new(
        code::METHOD_NOT_FOUND,
        format!("method {method:?} not found (known: {RPC_GET_METHODS}, {})", known.join(", ")),
    )
}

/// Calls `method` on the control socket at `path`; `Value::Null` params are
/// sent as none.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, RpcError> {
    let stream =
        UnixStream::connect(path).map_err(|source| RpcError::Connect { path: path.to_path_buf(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = stream.try_clone()?;
    let mut request = json!({ "jsonrpc": "2.0", "method": method, "id": 1 });
    if !params.is_null() {
        if let Some(obj) = request.as_object_mut() {
            obj.insert("params".into(), params);
        }
    }
    let mut line = request.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| RpcError::BadAnswer(e.to_string()))?;
    if answer.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || answer.get("id") != Some(&json!(1)) {
        return Err(RpcError::BadAnswer(format!("not the answer to request 1: {answer}")));
    }
    if let Some(e) = answer.get("error") {
        return Err(RpcError::Rpc {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(code::INTERNAL_ERROR),
            message: e.get("message").and_then(Value::as_str).unwrap_or("no message").to_string(),
            data: e.get("data").cloned(),
        });
    }
    answer.get("result").cloned().ok_or_else(|| RpcError::BadAnswer(format!("no result: {answer}")))
}

/// Refuses params other than `known`, naming the first stranger (SPDK's
/// decoders refuse unknown keys too, which catches misspelt params).
pub fn check_params(params: &Map<String, Value>, known: &[&str]) -> Result<(), RpcFault> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if known.is_empty() => {
            Err(RpcFault::invalid_params(format!("params.{k}: unknown parameter (this method takes none)")))
        }
        Some(k) => Err(RpcFault::invalid_params(format!(
            "params.{k}: unknown parameter (known: {})",
            known.join(", ")
        ))),
    }
}

/// Reads a required parameter as an unsigned integer, naming it on error.
pub fn param_u64(params: &Map<String, Value>, name: &str) -> Result<u64, RpcFault> {
    params
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| RpcFault::invalid_params(format!("params.{name}: expected an unsigned integer")))
}

/// Reads an optional unsigned integer parameter (absent or null is None).
pub fn param_u64_opt(params: &Map<String, Value>, name: &str) -> Result<Option<u64>, RpcFault> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => param_u64(params, name).map(Some),
    }
}

/// Reads a required string parameter, naming it on error.
pub fn param_str<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, RpcFault> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcFault::invalid_params(format!("params.{name}: expected a string")))
}

/// Reads an optional string parameter (absent or null is None).
pub fn param_str_opt<'a>(params: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, RpcFault> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => param_str(params, name).map(Some),
    }
}

/// Reads a required object parameter, naming it on error.
pub fn param_object<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a Map<String, Value>, RpcFault> {
    params
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| RpcFault::invalid_params(format!("params.{name}: expected an object")))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl RpcHandler for Echo {
        fn methods(&self) -> Vec<&'static str> {
            vec!["add", "echo"]
        }
        fn handle(&self, method: &str, params: &Map<String, Value>) -> Result<Value, RpcFault> {
            match method {
                "echo" => Ok(Value::Object(params.clone())),
                "add" => {
                    check_params(params, &["a", "b"])?;
                    Ok(json!(param_u64(params, "a")? + param_u64(params, "b")?))
                }
                other => Err(method_not_found(other, &self.methods())),
            }
        }
    }

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tandem-rpc-test-{}-{name}.sock", std::process::id()))
    }

    /// One client connection: send raw bytes, read answer lines.
    struct Client {
        w: UnixStream,
        r: BufReader<UnixStream>,
    }

    impl Client {
        fn new(path: &Path) -> Client {
            let s = UnixStream::connect(path).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            Client { w: s.try_clone().expect("clone"), r: BufReader::new(s) }
        }
        fn send(&mut self, bytes: &[u8]) {
            self.w.write_all(bytes).expect("send");
        }
        fn answer(&mut self) -> Value {
            let mut line = String::new();
            self.r.read_line(&mut line).expect("an answer line");
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
        }
        fn call(&mut self, request: &str) -> Value {
            self.send(request.as_bytes());
            self.send(b"\n");
            self.answer()
        }
    }

    #[test]
    fn the_library_client_gets_results_and_named_errors() {
        let path = socket_path("client");
        let _server = RpcServer::start(&path, Arc::new(Echo)).expect("start");
        assert_eq!(call(&path, "add", json!({"a": 2, "b": 3})).expect("add"), json!(5));
        let err = call(&path, "add", json!({"a": 2})).expect_err("b is missing");
        assert_eq!(err.code(), Some(code::INVALID_PARAMS), "{err}");
        assert!(err.to_string().starts_with("params.b: expected an unsigned integer"), "{err}");
        let err = call(&path, "add", json!({"a": 2, "b": 1, "c": 0})).expect_err("c is unknown");
        assert!(err.to_string().starts_with("params.c: unknown parameter"), "{err}");
        let err = call(&path, "nope", Value::Null).expect_err("no such method");
        assert_eq!(err.code(), Some(code::METHOD_NOT_FOUND), "{err}");
        let methods = call(&path, "rpc_get_methods", Value::Null).expect("rpc_get_methods");
        assert_eq!(methods, json!(["add", "echo", "rpc_get_methods"]));
    }

    #[test]
    fn answers_follow_json_rpc_2_0() {
        let path = socket_path("protocol");
        let _server = RpcServer::start(&path, Arc::new(Echo)).expect("start");
        let mut c = Client::new(&path);

        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":7}"#);
        assert_eq!(a, json!({"jsonrpc": "2.0", "result": 3, "id": 7}));
        let a = c.call(r#"{"jsonrpc":"2.0","method":"echo","id":"x"}"#);
        assert_eq!(a, json!({"jsonrpc": "2.0", "result": {}, "id": "x"}), "params may be omitted");

        // Garbage: Parse error with a null id, and the same connection goes on.
        let a = c.call("this is not json");
        assert_eq!(a["error"]["code"], code::PARSE_ERROR, "{a}");
        assert_eq!(a["id"], Value::Null, "{a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":4,"b":5},"id":8}"#);
        assert_eq!(a["result"], 9, "a good call after garbage: {a}");

        // JSON that is not a request object.
        for bad in ["42", r#""add""#, "null"] {
            let a = c.call(bad);
            assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "{bad}: {a}");
            assert_eq!(a["id"], Value::Null, "{bad}: {a}");
        }
        let a = c.call(r#"{"method":"add","params":{"a":1,"b":1},"id":9}"#);
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "no jsonrpc member: {a}");
        assert_eq!(a["id"], 9, "{a}");
        let a = c.call(r#"{"jsonrpc":"1.0","method":"add","id":10}"#);
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "wrong version: {a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":5,"id":11}"#);
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "method not a string: {a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","id":{"no":1}}"#);
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "an object id: {a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":[1,2],"id":12}"#);
        assert_eq!(a["error"]["code"], code::INVALID_PARAMS, "positional params: {a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"nope","id":13}"#);
        assert_eq!(a["error"]["code"], code::METHOD_NOT_FOUND, "{a}");
        assert_eq!(a["id"], 13, "{a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":1},"id":14}"#);
        assert_eq!(a["error"]["code"], code::INVALID_PARAMS, "{a}");
        assert!(a["error"]["message"].as_str().is_some_and(|m| m.contains("params.b")), "{a}");

        // Notifications are not answered, failing or not: the next answer
        // on the connection is the next call's.
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":{\"a\":1,\"b\":1}}\n");
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"nope\"}\n");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":2,"b":2},"id":15}"#);
        assert_eq!(a, json!({"jsonrpc": "2.0", "result": 4, "id": 15}));

        // A batch: one array of answers, notifications left out.
        let a = c.call(
            r#"[{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":1},"id":1},
                {"jsonrpc":"2.0","method":"add","params":{"a":3,"b":3}},
                {"jsonrpc":"2.0","method":"nope","id":2},
                7]"#
            .replace('\n', " ")
            .as_str(),
        );
        let answers = a.as_array().unwrap_or_else(|| panic!("a batch answer is an array: {a}"));
        assert_eq!(answers.len(), 3, "{a}");
        assert_eq!(answers[0], json!({"jsonrpc": "2.0", "result": 2, "id": 1}));
        assert_eq!(answers[1]["error"]["code"], code::METHOD_NOT_FOUND, "{a}");
        assert_eq!(answers[2]["error"]["code"], code::INVALID_REQUEST, "{a}");
        let a = c.call("[]");
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "empty batch: {a}");
        c.send(b"[{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":{\"a\":1,\"b\":1}}]\n");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":0,"b":0},"id":16}"#);
        assert_eq!(a["id"], 16, "a batch of notifications gets no answer: {a}");

        // An overlong line: an error, and the connection carries on.
        let mut big = b"{\"jsonrpc\":\"2.0\",\"method\":\"echo\",\"params\":{\"x\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', REQUEST_BYTES_MAX + 10));
        big.extend_from_slice(b"\"},\"id\":17}\n");
        c.send(&big);
        let a = c.answer();
        assert_eq!(a["error"]["code"], code::INVALID_REQUEST, "overlong: {a}");
        assert!(a["error"]["message"].as_str().is_some_and(|m| m.contains("longer than")), "{a}");
        let a = c.call(r#"{"jsonrpc":"2.0","method":"add","params":{"a":5,"b":5},"id":18}"#);
        assert_eq!(a["result"], 10, "a good call after an overlong line: {a}");

        // Two requests on one line, and one split over two writes with no
        // newline (as SPDK's rpc.py sends it): each gets its answer.
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":{\"a\":1,\"b\":0},\"id\":19}");
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":{\"a\":2,\"b\":0},\"id\":20}\n");
        assert_eq!(c.answer()["id"], 19);
        assert_eq!(c.answer()["id"], 20);
        c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",");
        std::thread::sleep(Duration::from_millis(50));
        c.send(b"\"params\":{\"a\":3,\"b\":0},\"id\":21}");
        assert_eq!(c.answer(), json!({"jsonrpc": "2.0", "result": 3, "id": 21}));
    }

    #[test]
    fn a_bad_line_after_the_previous_lines_newline_is_answered_once() {
        // One read can carry the newline that ended the last request and a
        // bad line after it: the bad line gets one answer, not one per newline.
        let path = socket_path("coalesced");
        let _server = RpcServer::start(&path, Arc::new(Echo)).expect("start");
        let mut c = Client::new(&path);
        c.send(
            b"\n{not json\n{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":{\"a\":1,\"b\":2},\"id\":3}\n",
        );
        assert_eq!(c.answer()["error"]["code"], code::PARSE_ERROR);
        assert_eq!(
            c.answer(),
            json!({"jsonrpc": "2.0", "result": 3, "id": 3}),
            "the next answer is the next request's"
        );
        let mut buf = b"\n\n{bad".to_vec();
        assert!(skip_line(&mut buf), "the bad request's own line has not ended");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_request_without_a_newline_before_eof_is_answered() {
        let path = socket_path("eof");
        let _server = RpcServer::start(&path, Arc::new(Echo)).expect("start");
        let mut c = Client::new(&path);
        c.send(br#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":1},"id":1}"#);
        c.w.shutdown(std::net::Shutdown::Write).expect("half close");
        assert_eq!(c.answer(), json!({"jsonrpc": "2.0", "result": 2, "id": 1}));
        let mut c = Client::new(&path);
        c.send(br#"{"jsonrpc":"2.0","method":"#);
        c.w.shutdown(std::net::Shutdown::Write).expect("half close");
        assert_eq!(c.answer()["error"]["code"], code::PARSE_ERROR, "a truncated request at EOF");
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
        let path = socket_path("stale");
        {
            let _l = UnixListener::bind(&path).expect("bind");
        } // listener dropped, file stays: stale
        let server = RpcServer::start(&path, Arc::new(Echo)).expect("replaces a stale socket");
        assert!(RpcServer::start(&path, Arc::new(Echo)).is_err(), "a live socket is not clobbered");
        drop(server);
        assert!(!path.exists());
    }
}
