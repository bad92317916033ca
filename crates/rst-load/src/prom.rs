//! Just enough of a Prometheus scraper and of /proc to measure a receiver.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

/// `GET http://addr/metrics`: the text exposition.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to the metrics endpoint {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // One write: a minimal server may answer (and close) after the first segment.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the metrics from {addr}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}"))?;
    let status = head.lines().next().unwrap_or("");
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "metrics endpoint {addr} answered {status:?}"
    );
    if head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample named exactly `series` (name and labels as exposed,
/// e.g. `rst_messages_total{command="data"}`), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            let rest = rest.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// Scrapes `addr` and returns the value of `series` (0 if absent).
pub fn scrape_value(addr: SocketAddr, series: &str) -> anyhow::Result<u64> {
    Ok(value(&scrape(addr)?, series).unwrap_or(0.0) as u64)
}

/// Resident set size of process `pid` in KiB (`VmRSS` from /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// Datagrams the kernel dropped for UDP sockets bound to `port` on IPv4 and IPv6
/// (receive queue full): the `drops` column of /proc/net/udp and /proc/net/udp6.
pub fn udp_drops(port: u16) -> anyhow::Result<u64> {
    let mut drops = 0;
    let mut found = false;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) {
                found = true;
                drops += fields
                    .last()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    anyhow::ensure!(found, "no UDP socket on port {port} in /proc/net/udp");
    Ok(drops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_labelled_series() {
        let text = "# HELP rst_messages_total x\n# TYPE rst_messages_total counter\n\
                    rst_messages_total{command=\"inv\"} 5\nrst_messages_total{command=\"data\"} 1234\n\
                    rst_datagrams_total 99\n";
        assert_eq!(
            value(text, "rst_messages_total{command=\"data\"}"),
            Some(1234.0)
        );
        assert_eq!(value(text, "rst_datagrams_total"), Some(99.0));
        assert_eq!(value(text, "rst_messages_total"), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn counts_drops_of_a_bound_port() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        assert_eq!(udp_drops(port).unwrap(), 0);
    }

    #[test]
    fn reads_own_rss() {
        assert!(vm_rss_kib(std::process::id()).unwrap() > 0);
    }
}
