//! A small HTTP/1.1 server for the operator endpoints (`--metrics`), on a
//! completion port of its own: one thread owns an inline port and serves
//! every HTTP connection on it, so a scrape never runs on an echo worker and
//! a slow scraper never stalls an echo.
//!
//! One request per connection, answered with `Connection: close`. Limits:
//! [`MAX_CONNS`] connections at once (one more is closed at once, unread),
//! [`MAX_REQUEST`] bytes of request head, and [`TIMEOUT`] from accept to
//! close for everything (every operation carries that one deadline, so a
//! client that sends slowly, or never reads, is cut there). `GET` and `HEAD`
//! only (`405` otherwise), unknown paths `404`, malformed or oversized
//! requests `400`. After the response the server shuts its side down and
//! reads until the client closes (so unread request bytes never turn the
//! close into a reset that could destroy the response in flight).

use std::net::{Shutdown, SocketAddr};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use completion_port::{Backend, Buf, Completion, GetError, Handle, OpId, OpKind, OpOptions, Port};
use socket2::Socket;

use super::route::{Ctrl, Route};

/// Connections served at once; one more is closed as soon as it is accepted.
pub(crate) const MAX_CONNS: usize = 16;
/// The longest request head (request line and headers) accepted.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// From accept to close, whatever the connection does.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// The completion key of the listener (the port has one).
const LISTENER: Route = Route::Listener(0);
const T_ACCEPT: u64 = 1;
const T_RESUME: u64 = 2;
const T_RECV: u64 = 3;
const T_SEND: u64 = 4;
const T_LINGER: u64 = 5;
/// After an accept error (out of descriptors), accepting resumes after this.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a [`Service`] answers.
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A `text/plain` response.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The endpoints behind the server.
pub(crate) trait Service: Send + 'static {
    /// Whether `path` exists (else `404`).
    fn has(&self, path: &str) -> bool;
    /// The answer to `GET path` (`HEAD` sends its head only).
    fn get(&self, path: &str) -> Response;
}

/// The running HTTP side.
pub(crate) struct HttpServer {
    port: Port,
    thread: Option<JoinHandle<()>>,
    /// The bound address.
    pub addr: SocketAddr,
}

impl HttpServer {
    /// Starts serving on `listener` (bound and listening) on a thread of its
    /// own with its own inline port.
    pub(crate) fn start(
        listener: Socket,
        backend: Option<Backend>,
        svc: impl Service,
    ) -> Result<HttpServer, String> {
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| "the metrics listener has no IP address".to_string())?;
        let (tx, rx) = mpsc::channel::<Result<Port, String>>();
        let thread = std::thread::Builder::new()
            .name("iocp-echo-http".into())
            .spawn(move || {
                let mut b = Port::builder()
                    .inline(true)
                    .pool_buffers(16)
                    .pool_buffer_size(4096)
                    .sq_entries(64)
                    .cq_entries(256);
                if let Some(be) = backend {
                    b = b.backend(be);
                }
                let port = match b.build() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot create its completion port: {e}")));
                        return;
                    }
                };
                let lh = match port.associate(listener, LISTENER.to_key()) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot use the listener: {e}")));
                        port.close();
                        return;
                    }
                };
                let mut srv = Server {
                    port: port.clone(),
                    svc,
                    lh,
                    accept_op: None,
                    backoff: false,
                    quitting: false,
                    slots: (0..MAX_CONNS)
                        .map(|_| Slot { gen: 1, conn: None })
                        .collect(),
                };
                srv.start_accept();
                let _ = tx.send(Ok(port.clone()));
                drop(tx);
                srv.run();
                port.close();
            })
            .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
        match rx.recv() {
            Ok(Ok(port)) => Ok(HttpServer {
                port,
                thread: Some(thread),
                addr,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the HTTP thread died while starting".into())
            }
        }
    }

    /// Stops serving: open connections are closed, the thread is joined.
    pub(crate) fn stop(mut self) {
        let _ = Ctrl::Quit.post(&self.port);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Reading the request.
    Reading,
    /// Sending the response.
    Sending,
    /// Response sent, our side shut down: reading until the client closes.
    Lingering,
}

struct Conn {
    h: Handle,
    st: St,
    deadline: Instant,
    /// Operations started and not yet completed.
    ops: u32,
    closing: bool,
}

struct Slot {
    /// The generation its connection's key carries (never 0).
    gen: u32,
    conn: Option<Conn>,
}

struct Server<S> {
    port: Port,
    svc: S,
    lh: Handle,
    accept_op: Option<OpId>,
    /// Accepting stopped after an error; a timer resumes it.
    backoff: bool,
    quitting: bool,
    slots: Vec<Slot>,
}

impl<S: Service> Server<S> {
    fn run(&mut self) {
        let mut batch = Vec::with_capacity(64);
        while !self.quitting {
            match self.port.get_many(&mut batch, 64, None) {
                Ok(_) => {}
                Err(GetError::TimedOut) => continue,
                Err(GetError::Abandoned) => break,
            }
            for c in batch.drain(..) {
                match Route::from_key(c.key) {
                    Some(Route::Control) => self.quitting = true,
                    Some(Route::Listener(_)) => self.on_listener(c),
                    Some(Route::Conn { idx, gen }) => self.on_conn(idx as usize, gen, c),
                    _ => {}
                }
            }
        }
        self.lh.close();
        for s in &mut self.slots {
            if let Some(c) = &s.conn {
                c.h.close();
            }
        }
        // The port's close (by the caller, on this thread) waits for the
        // kernel to hand every buffer back.
    }

    fn start_accept(&mut self) {
        match self.port.accept_stream(&self.lh, T_ACCEPT) {
            Ok(op) => self.accept_op = Some(op),
            Err(e) => {
                tracing::warn!("metrics: cannot accept: {}", e.error);
                self.pause_accepts();
            }
        }
    }

    fn pause_accepts(&mut self) {
        if !self.backoff {
            self.backoff = true;
            if let Some(op) = self.accept_op {
                let _ = self.lh.cancel(op);
            } else {
                let _ = self
                    .port
                    .post_after(ACCEPT_BACKOFF, LISTENER.to_key(), T_RESUME);
            }
        }
    }

    fn on_listener(&mut self, mut c: Completion) {
        if c.kind == OpKind::Timer {
            self.backoff = false;
            if self.accept_op.is_none() {
                self.start_accept();
            }
            return;
        }
        if let Some((sock, _peer)) = c.take_accepted() {
            self.admit(sock);
        }
        if let Err(e) = &c.result {
            if !completion_port::is_aborted(e) {
                tracing::debug!("metrics: accept: {e}");
                self.pause_accepts();
            }
        }
        if !c.more {
            self.accept_op = None;
            if self.backoff {
                let _ = self
                    .port
                    .post_after(ACCEPT_BACKOFF, LISTENER.to_key(), T_RESUME);
            } else {
                self.start_accept();
            }
        }
    }

    fn admit(&mut self, sock: Socket) {
        let Some(idx) = self.slots.iter().position(|s| s.conn.is_none()) else {
            tracing::debug!("metrics: {MAX_CONNS} connections open; closing a new one");
            return; // dropping the socket closes it
        };
        let gen = self.slots[idx].gen;
        let key = Route::Conn {
            idx: idx as u32,
            gen,
        }
        .to_key();
        let h = match self.port.associate(sock, key) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("metrics: cannot associate a connection: {e}");
                return;
            }
        };
        let mut conn = Conn {
            h,
            st: St::Reading,
            deadline: Instant::now() + TIMEOUT,
            ops: 0,
            closing: false,
        };
        self.recv(&mut conn, Vec::with_capacity(MAX_REQUEST + 1), T_RECV);
        self.slots[idx].conn = Some(conn);
        self.settle(idx);
    }

    fn opts(conn: &Conn, token: u64) -> OpOptions {
        OpOptions {
            token,
            deadline: Some(conn.deadline),
        }
    }

    fn recv(&self, conn: &mut Conn, buf: Vec<u8>, token: u64) {
        match self.port.recv(&conn.h, buf, Self::opts(conn, token)) {
            Ok(_) => conn.ops += 1,
            Err(_) => close(conn),
        }
    }

    fn on_conn(&mut self, idx: usize, gen: u32, mut c: Completion) {
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if slot.gen != gen {
            return;
        }
        let Some(mut conn) = slot.conn.take() else {
            return;
        };
        conn.ops -= 1;
        if !conn.closing {
            let buf = match c.take_buf() {
                Some(Buf::Vec(v)) => v,
                _ => Vec::new(),
            };
            match (c.token, &c.result) {
                (T_RECV, Ok(n)) if *n > 0 => self.on_request_bytes(&mut conn, buf),
                (T_SEND, Ok(_)) => {
                    // Response sent: our FIN, then wait for the client's.
                    let _ = conn.h.with_socket(|s| s.shutdown(Shutdown::Write));
                    conn.st = St::Lingering;
                    self.recv(&mut conn, Vec::with_capacity(512), T_LINGER);
                }
                (T_LINGER, Ok(n)) if *n > 0 => {
                    let mut v = buf;
                    v.clear();
                    self.recv(&mut conn, v, T_LINGER);
                }
                // The client closed, an error, or the deadline.
                (_, r) => {
                    if let Err(e) = r {
                        tracing::debug!("metrics: connection ({:?}): {e}", conn.st);
                    }
                    close(&mut conn);
                }
            }
        }
        self.slots[idx].conn = Some(conn);
        self.settle(idx);
    }

    /// Frees slot `idx` once its connection is closed and idle.
    fn settle(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        if s.conn.as_ref().is_some_and(|c| c.closing && c.ops == 0) {
            s.conn = None;
            s.gen = s.gen.wrapping_add(1).max(1);
        }
    }

    fn on_request_bytes(&mut self, conn: &mut Conn, buf: Vec<u8>) {
        let resp = match parse(&buf) {
            Parsed::Partial if buf.len() > MAX_REQUEST => Some((
                Response::text(
                    400,
                    format!("bad request: the request head is longer than {MAX_REQUEST} bytes\n"),
                ),
                false,
            )),
            Parsed::Partial => None,
            Parsed::Bad(why) => Some((Response::text(400, format!("bad request: {why}\n")), false)),
            Parsed::Done { method, path } => Some(self.route(&method, &path)),
        };
        match resp {
            None => self.recv(conn, buf, T_RECV),
            Some((r, head_only)) => {
                conn.st = St::Sending;
                let bytes = render(&r, head_only);
                match self.port.send(&conn.h, bytes, Self::opts(conn, T_SEND)) {
                    Ok(_) => conn.ops += 1,
                    Err(_) => close(conn),
                }
            }
        }
    }

    /// The response to `method path`, and whether to send its head only.
    fn route(&self, method: &str, target: &str) -> (Response, bool) {
        let path = origin_path(target);
        if !self.svc.has(path) {
            return (Response::text(404, format!("not found: {path}\n")), false);
        }
        match method {
            "GET" => (self.svc.get(path), false),
            "HEAD" => (self.svc.get(path), true),
            m => (
                Response::text(
                    405,
                    format!("method {m} not allowed on {path} (GET or HEAD)\n"),
                ),
                false,
            ),
        }
    }
}

fn close(conn: &mut Conn) {
    if !conn.closing {
        conn.closing = true;
        conn.h.close();
    }
}

enum Parsed {
    Done { method: String, path: String },
    Partial,
    Bad(String),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Parsed::Done {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or_default().to_string(),
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Bad(e.to_string()),
    }
}

/// The path of a request target: origin form (`/metrics?x=1`) or absolute
/// form (`http://host:port/metrics`), without the query.
fn origin_path(target: &str) -> &str {
    let t = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    t.split(['?', '#']).next().unwrap_or(t)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn render(r: &Response, head_only: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut v = head.into_bytes();
    if !head_only {
        v.extend_from_slice(r.body.as_bytes());
    }
    v
}

/// Binds the metrics listener (before anything else starts, so a busy or
/// foreign address fails the start-up with its name and the OS error).
pub(crate) fn bind(addr: SocketAddr) -> Result<Socket, String> {
    super::listen::bind_tcp(addr)
        .map_err(|e| format!("cannot listen on metrics http://{addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(origin_path("/metrics"), "/metrics");
        assert_eq!(origin_path("/metrics?x=1"), "/metrics");
        assert_eq!(origin_path("http://127.0.0.1:9/readyz"), "/readyz");
        assert_eq!(origin_path("http://127.0.0.1:9"), "/");
    }

    #[test]
    fn parses() {
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Done { method, path } if method == "GET" && path == "/metrics"
        ));
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\nHo"),
            Parsed::Partial
        ));
        assert!(matches!(
            parse(b"GET /me trics HTTP/1.1\r\n\r\n"),
            Parsed::Bad(_)
        ));
        assert!(matches!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Bad(_)));
    }

    #[test]
    fn renders() {
        let r = render(&Response::text(405, "no\n"), false);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{s}");
        assert!(s.contains("Allow: GET, HEAD\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\nno\n"), "{s}");
        let h = String::from_utf8(render(&Response::text(200, "ok\n"), true)).unwrap();
        assert!(
            h.contains("Content-Length: 3\r\n") && h.ends_with("\r\n\r\n"),
            "{h}"
        );
    }
}
