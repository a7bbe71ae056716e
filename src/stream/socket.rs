//! The WebSocket's TCP socket: SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT, TCP_USER_TIMEOUT
//! and TCP_NODELAY, all set before the handshake (without TCP_USER_TIMEOUT a link
//! with unacknowledged data is declared dead only after ~15 min: keepalive probes stop
//! while data is in flight, and tcp_retries2=15 takes that long). Also the HTTP CONNECT tunnel
//! through a proxy, and reading the options back from the live socket for status and tests.

use crate::config::Keepalive;
use crate::gateway::proxy::ProxyChoice;
use base64::Engine;
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The longest proxy response header we read.
const MAX_PROXY_RESPONSE: usize = 16 * 1024;

/// The options as the kernel reports them on a live socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocketReport {
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_KEEPIDLE, seconds.
    pub keepalive_idle_s: u64,
    /// TCP_KEEPINTVL, seconds.
    pub keepalive_interval_s: u64,
    /// TCP_KEEPCNT.
    pub keepalive_count: u32,
    /// TCP_USER_TIMEOUT, milliseconds.
    pub user_timeout_ms: u64,
    /// TCP_NODELAY.
    pub nodelay: bool,
}

/// Reads the options back with getsockopt.
pub fn report(stream: &TcpStream) -> io::Result<SocketReport> {
    let s = SockRef::from(stream);
    Ok(SocketReport {
        keepalive: s.keepalive()?,
        keepalive_idle_s: s.tcp_keepalive_time()?.as_secs(),
        keepalive_interval_s: s.tcp_keepalive_interval()?.as_secs(),
        keepalive_count: s.tcp_keepalive_retries()?,
        user_timeout_ms: s.tcp_user_timeout()?.map_or(0, |d| d.as_millis() as u64),
        nodelay: s.tcp_nodelay()?,
    })
}

fn apply(socket: &TcpSocket, k: &Keepalive) -> io::Result<()> {
    let s = SockRef::from(socket);
    let ka = TcpKeepalive::new()
        .with_time(k.tcp_keepalive_idle.get())
        .with_interval(k.tcp_keepalive_interval.get())
        .with_retries(k.tcp_keepalive_count);
    s.set_tcp_keepalive(&ka)?;
    s.set_tcp_user_timeout(Some(k.tcp_user_timeout.get()))?;
    s.set_tcp_nodelay(true)?;
    Ok(())
}

/// Connects to the first reachable address of `host:port` with the options set before
/// `connect()`, each address attempt bounded by `timeout`.
pub async fn connect_tcp(
    host: &str,
    port: u16,
    k: &Keepalive,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("resolving {host} timed out"),
                )
            })??
            .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        apply(&socket, k)?;
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP connect to {addr} timed out"),
                )
            }
        }
    }
    Err(last)
}

/// Opens the TCP connection to `host:port`, directly or through an HTTP CONNECT tunnel.
pub async fn connect(
    host: &str,
    port: u16,
    proxy: Option<&ProxyChoice>,
    k: &Keepalive,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let Some(ProxyChoice(proxy)) = proxy else {
        return connect_tcp(host, port, k, timeout).await;
    };
    let url = &proxy.0;
    let phost = url.host_str().unwrap_or_default();
    let pport = url.port_or_known_default().unwrap_or(3128);
    let mut stream = connect_tcp(phost, pport, k, timeout).await?;
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if !url.username().is_empty() {
        let user = percent_decode(url.username());
        let pass = percent_decode(url.password().unwrap_or(""));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    tokio::time::timeout(timeout, async {
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        // Byte by byte so nothing of the tunnelled TLS stream is consumed.
        while !buf.ends_with(b"\r\n\r\n") {
            if buf.len() >= MAX_PROXY_RESPONSE {
                return Err(io::Error::other("proxy response header too long"));
            }
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "proxy closed the connection during CONNECT",
                ));
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf);
        let status_line = head.lines().next().unwrap_or_default();
        let code = status_line.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            let hint = if code == "407" {
                " (the proxy wants credentials: set them in `proxy` as http://USER:PASSWORD@HOST:PORT, or check them)"
            } else {
                ""
            };
            return Err(io::Error::other(format!(
                "proxy refused CONNECT: {}{hint}",
                status_line.chars().take(120).collect::<String>()
            )));
        }
        Ok(())
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "proxy CONNECT timed out"))??;
    Ok(stream)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_are_set_before_connect_and_read_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let k = Keepalive {
            tcp_keepalive_idle: crate::config::HumanDuration::from_secs(7),
            tcp_keepalive_interval: crate::config::HumanDuration::from_secs(3),
            tcp_keepalive_count: 4,
            tcp_user_timeout: crate::config::HumanDuration::from_millis(12_500),
            ..Keepalive::default()
        };
        let s = connect_tcp("127.0.0.1", port, &k, Duration::from_secs(5))
            .await
            .unwrap();
        let r = report(&s).unwrap();
        assert_eq!(
            r,
            SocketReport {
                keepalive: true,
                keepalive_idle_s: 7,
                keepalive_interval_s: 3,
                keepalive_count: 4,
                user_timeout_ms: 12_500,
                nodelay: true,
            }
        );
    }

    #[tokio::test]
    async fn connect_through_proxy_sends_credentials_once() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let paddr = proxy.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = proxy.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let choice = ProxyChoice(crate::config::ProxyUrl(
            reqwest::Url::parse(&format!("http://us%40r:p%3Ass@{paddr}")).unwrap(),
        ));
        let k = Keepalive::default();
        connect("gw.example", 443, Some(&choice), &k, Duration::from_secs(5))
            .await
            .unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("CONNECT gw.example:443 HTTP/1.1\r\n"),
            "{req}"
        );
        let expect = base64::engine::general_purpose::STANDARD.encode("us@r:p:ss");
        assert!(
            req.contains(&format!("Proxy-Authorization: Basic {expect}")),
            "{req}"
        );
    }
}
