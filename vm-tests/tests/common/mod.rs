//! Helpers shared by the VM test files.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Boot budget: about 3-5 s with TCG, more when the machine is busy.
pub const BOOT: Duration = Duration::from_secs(90);
/// Budget for a quick guest command.
pub const CMD: Duration = Duration::from_secs(20);

/// True when the test can run: it needs root for namespaces and taps. Says
/// so loudly when it cannot.
pub fn can_run() -> bool {
    vm_tests::require_root()
}

/// Accepts one connection within `timeout` (so a broken guest fails the test
/// instead of hanging it).
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves one HTTP/1.0 request with `body`; returns the request line.
pub fn serve_http_once(
    listener: &TcpListener,
    body: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let stream = accept_within(listener, timeout)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(request_line.trim().to_owned())
}

/// Reads everything one client sends until it closes.
pub fn read_once(listener: &TcpListener, timeout: Duration) -> std::io::Result<String> {
    let mut stream = accept_within(listener, timeout)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
