//! A minimal HTTP/1.1 client over a plain TCP socket, for tests that must
//! send exactly the bytes they mean (paths no client library would send,
//! bodies cut off mid-way, requests on one kept-alive connection).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` code of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

/// One kept-alive connection.
pub struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s),
        })
    }

    /// A second handle on the socket, to write from another thread while
    /// this one reads.
    pub fn writer(&self) -> TcpStream {
        self.r.get_ref().try_clone().expect("clone the socket")
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.r.get_mut().write_all(bytes)
    }

    /// Sends a request (with `Content-Length` when there is a body) and
    /// reads its response.
    pub fn request(
        &mut self,
        method: &str,
        target: &[u8],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut req = head(method, target, headers);
        if !body.is_empty() || method == "PUT" || method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.send_raw(&req)?;
        self.read_response(method == "HEAD")
    }

    /// Reads a response's status line and headers.
    pub fn read_head(&mut self) -> std::io::Result<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok((status, headers))
    }

    /// Reads exactly `n` bytes (of a body whose head was read).
    pub fn read_bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads one response.
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Resp> {
        let (status, headers) = self.read_head()?;
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if !head_only && status != 204 && status != 304 {
            if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                loop {
                    let mut sz = String::new();
                    self.r.read_line(&mut sz)?;
                    let n = usize::from_str_radix(sz.trim().split(';').next().unwrap(), 16)
                        .map_err(std::io::Error::other)?;
                    let mut chunk = vec![0u8; n + 2];
                    self.r.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
                body = vec![0u8; n];
                self.r.read_exact(&mut body)?;
            } else {
                self.r.read_to_end(&mut body)?;
            }
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

fn head(method: &str, target: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req
}

/// One request on its own connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &[u8],
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut c = Conn::open(addr).expect("connect to the API");
    c.request(method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {}: {e}", String::from_utf8_lossy(target)))
}

/// Sends a PUT that declares `declared` bytes but sends only `body`, then
/// closes the connection.
pub fn put_cut_off(addr: SocketAddr, target: &str, key: &str, declared: usize, body: &[u8]) {
    let mut c = Conn::open(addr).expect("connect to the API");
    let auth = format!("Bearer {key}");
    let mut req = head("PUT", target.as_bytes(), &[("Authorization", &auth)]);
    req.extend_from_slice(format!("Content-Length: {declared}\r\n\r\n").as_bytes());
    req.extend_from_slice(body);
    let _ = c.send_raw(&req);
    std::thread::sleep(Duration::from_millis(100));
    let _ = c.r.get_mut().shutdown(std::net::Shutdown::Both);
}
