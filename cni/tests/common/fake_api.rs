//! A stand-in for kube-apiserver: no API server can run on this machine, so
//! the Kubernetes tests talk to this small HTTP/1.1 server in the node's
//! namespace. It answers from recorded API responses (tests/fixtures/kube,
//! in the exact shape kube-apiserver returns them), streams watch events
//! chunked and keeps watches open like the real thing, and records every
//! request so a test can tell which calls reached the API. Each test gives
//! the routes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::Node;

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub content_type: String,
    pub body: String,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
    pub fn is_watch(&self) -> bool {
        self.target.contains("watch=true") || self.target.contains("watch=1")
    }
}

/// What a route answers.
pub enum Reply {
    /// A status and a JSON body.
    Json(u16, String),
    /// A watch: these JSON lines (one event each), then the stream stays
    /// open until the server stops.
    Watch(String),
    /// A watch: these JSON lines, then every line pushed to the feed (by the
    /// test, while the watch is open), until the server stops.
    Live(String, Arc<Feed>),
}

/// Watch events a test sends while a [`Reply::Live`] watch is open.
#[derive(Debug, Default)]
pub struct Feed(Mutex<Vec<String>>);

impl Feed {
    pub fn push(&self, event: &str) {
        self.0.lock().unwrap().push(event.to_string());
    }
}

impl Reply {
    /// kube-apiserver's 404 `Status`.
    pub fn not_found() -> Self {
        Reply::Json(
            404,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404})
                .to_string(),
        )
    }
}

/// A recorded API response, `@IPAM@` replaced by `ipam`.
pub fn fixture(name: &str, ipam: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/kube/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("@IPAM@", ipam)
}

type Route = dyn Fn(&Request) -> Reply + Send + Sync;

/// The server; stops (and ends its watches) on drop.
pub struct FakeApi {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl FakeApi {
    /// Listens on the loopback of `node`'s namespace, where the plugin and
    /// the agent run, answering with `route`.
    pub fn start(node: &Node, route: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(node, 0, route)
    }

    /// The same on a given port (0: any), e.g. the port of a server that
    /// was stopped: the API coming back.
    pub fn start_on(
        node: &Node,
        port: u16,
        route: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = netattach::netns::run_in(std::path::Path::new(&node.ns.path()), move || {
            TcpListener::bind(("127.0.0.1", port))
        })
        .unwrap()
        .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let route: Arc<Route> = Arc::new(route);
        let (seen, stopped) = (requests.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (seen, stopped, route) = (seen.clone(), stopped.clone(), route.clone());
                        std::thread::spawn(move || serve(stream, &seen, &stopped, &*route));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApi {
            port,
            requests,
            stop,
        }
    }

    /// A kubeconfig for this server (token auth, plain HTTP).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{token: test-token}}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, stop: &AtomicBool, route: &Route) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        // A stopped server answers nothing more, on kept-alive connections too.
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::SeqCst) {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let req = Request {
            method,
            target,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        seen.lock().unwrap().push(req.clone());
        let (events, feed) = match route(&req) {
            Reply::Watch(events) => (events, None),
            Reply::Live(events, feed) => (events, Some(feed)),
            Reply::Json(status, text) => {
                let reason = if status == 200 { "OK" } else { "Not Found" };
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                continue;
            }
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for event in events.lines().filter(|l| !l.trim().is_empty()) {
            let chunk = format!("{event}\n");
            let _ = write!(out, "{:x}\r\n{chunk}\r\n", chunk.len());
            let _ = out.flush();
        }
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            let new: Vec<String> = feed
                .as_ref()
                .map(|f| f.0.lock().unwrap()[sent..].to_vec())
                .unwrap_or_default();
            for event in new {
                sent += 1;
                let chunk = format!("{event}\n");
                let _ = write!(out, "{:x}\r\n{chunk}\r\n", chunk.len());
                let _ = out.flush();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = write!(out, "0\r\n\r\n");
        return;
    }
}
