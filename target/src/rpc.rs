//! The control socket: a Unix stream socket that takes one JSON request per
//! line (`{"method": "ana_set", "params": {...}}`) and answers one JSON line
//! (`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`).
//!
//! `tandem rpc` is its client; tests and the demo use it to change ANA state,
//! read status and inject faults. The server runs on its own thread, off the
//! reactors: it only calls control-path methods. Bad input — a line that is
//! not JSON, an unknown method, a missing or mistyped parameter, a line over
//! `REQUEST_BYTES_MAX` — gets an error answer naming the problem; the
//! connection and the server carry on.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

/// The longest request line accepted.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

/// What answers RPC methods.
pub trait RpcHandler: Send + Sync {
    /// Runs `method` with `params`; an Err is a message for the caller.
    fn handle(&self, method: &str, params: &Value) -> Result<Value, String>;
}

#[derive(thiserror::Error, Debug)]
pub enum RpcError {
    #[error("cannot reach the control socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad answer from the control socket: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Refused(String),
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
        info!(path = %path.display(), "control socket listening");
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

fn serve_connection(stream: UnixStream, handler: &dyn RpcHandler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(REQUEST_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let answer = if line.len() > REQUEST_BYTES_MAX {
            // Drop the rest of the oversized line before answering.
            let mut rest = Vec::new();
            let _ = reader.read_until(b'\n', &mut rest);
            error_answer(format!("request longer than {REQUEST_BYTES_MAX} bytes"))
        } else {
            answer_line(&line, handler)
        };
        let mut out = answer.to_string();
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

fn error_answer(msg: String) -> Value {
    json!({ "ok": false, "error": msg })
}

fn answer_line(line: &[u8], handler: &dyn RpcHandler) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error_answer(format!("request is not JSON: {e}")),
    };
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error_answer("request.method: expected a string".into());
    };
    let params = request.get("params").cloned().unwrap_or(Value::Null);
    match handler.handle(method, &params) {
        Ok(result) => json!({ "ok": true, "result": result }),
        Err(e) => error_answer(e),
    }
}

/// Calls `method` on the control socket at `path`.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value, RpcError> {
    let stream =
        UnixStream::connect(path).map_err(|source| RpcError::Connect { path: path.to_path_buf(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = stream.try_clone()?;
    let mut req = json!({ "method": method, "params": params }).to_string();
    req.push('\n');
    w.write_all(req.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| RpcError::BadAnswer(e.to_string()))?;
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    } else {
        let msg = answer.get("error").and_then(Value::as_str).unwrap_or("unknown error").to_string();
        Err(RpcError::Refused(msg))
    }
}

/// Reads a required parameter as an unsigned integer, naming it on error.
pub fn param_u64(params: &Value, name: &str) -> Result<u64, String> {
    params
        .get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("params.{name}: expected an unsigned integer"))
}

/// Reads a required string parameter, naming it on error.
pub fn param_str<'a>(params: &'a Value, name: &str) -> Result<&'a str, String> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| format!("params.{name}: expected a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl RpcHandler for Echo {
        fn handle(&self, method: &str, params: &Value) -> Result<Value, String> {
            match method {
                "echo" => Ok(params.clone()),
                "add" => Ok(json!(param_u64(params, "a")? + param_u64(params, "b")?)),
                other => Err(format!("unknown method {other:?}")),
            }
        }
    }

    fn socket_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tandem-rpc-test-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn calls_answer_and_bad_input_is_named() {
        let path = socket_path("basic");
        let _server = RpcServer::start(&path, Arc::new(Echo)).expect("start");
        assert_eq!(call(&path, "add", json!({"a": 2, "b": 3})).unwrap(), json!(5));
        let err = call(&path, "add", json!({"a": 2})).unwrap_err();
        assert_eq!(err.to_string(), "params.b: expected an unsigned integer");
        let err = call(&path, "nope", Value::Null).unwrap_err();
        assert!(err.to_string().contains("unknown method"), "{err}");

        // Garbage and an oversized line on one connection: each gets an
        // answer, and the connection still serves a good request after.
        let s = UnixStream::connect(&path).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(b"this is not json\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("request is not JSON"), "{line}");
        let mut big = vec![b'x'; REQUEST_BYTES_MAX + 10];
        big.push(b'\n');
        w.write_all(&big).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("longer than"), "{line}");
        w.write_all(b"{\"method\":\"echo\",\"params\":7}\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"result\":7"), "{line}");
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
        let path = socket_path("stale");
        {
            let _l = UnixListener::bind(&path).unwrap();
        } // listener dropped, file stays: stale
        let server = RpcServer::start(&path, Arc::new(Echo)).expect("replaces a stale socket");
        assert!(RpcServer::start(&path, Arc::new(Echo)).is_err(), "a live socket is not clobbered");
        drop(server);
        assert!(!path.exists());
    }
}
