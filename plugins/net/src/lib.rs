//! Connection code the adapters share (linked into each adapter's library; not a plugin):
//! a TCP connection with timeouts, and TLS on top of it with rustls, trusting the public web
//! roots plus the CAs of a PEM file (a private server's).

use std::{
    io::{self, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

/// A connection, plain or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Connects to `address` (`host:port`, every address it resolves to in turn), each attempt
/// within `timeout`; reads then time out after `read_timeout` (so a thread can look at its
/// queue and stop flag between reads).
pub fn connect(address: &str, timeout: Duration, read_timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(read_timeout))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// TLS over `tcp` for `server_name` (the name the certificate must hold); the public web
/// roots are trusted, plus the certificates of `ca_file` (PEM).
pub fn tls(tcp: TcpStream, server_name: &str, ca_file: Option<&str>) -> io::Result<Conn> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let bad = |e: &dyn std::fmt::Display| io::Error::other(format!("tls_ca_file {file}: {e}"));
        for cert in CertificateDer::pem_file_iter(file).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::other(format!("{server_name}: {e}")))?;
    let session =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(session, tcp))))
}

/// What an adapter's calls share with its connection thread: the stop flag, the lines or
/// stanzas waiting to be written (the thread writes them; one it could not write goes back to
/// the front, so an accepted message survives a reconnect), and what the thread reports.
pub struct Link<S> {
    /// Set by `stop`; the thread ends soon after.
    pub stop: std::sync::atomic::AtomicBool,
    /// Waiting to be written, in order.
    pub outgoing: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// What the thread reports (connected, to whom, the last error...).
    pub status: std::sync::Mutex<S>,
}

impl<S: Clone> Link<S> {
    /// A link whose thread reports `status` until it says otherwise.
    pub fn new(status: S) -> Link<S> {
        Link {
            stop: std::sync::atomic::AtomicBool::new(false),
            outgoing: std::sync::Mutex::new(std::collections::VecDeque::new()),
            status: std::sync::Mutex::new(status),
        }
    }

    /// What the thread reports now.
    pub fn status(&self) -> S {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Stops `link`'s thread and joins it: what a plugin's `stop` owes the host.
pub fn stop<S>(link: &Link<S>, thread: Option<std::thread::JoinHandle<()>>) -> Result<(), String> {
    link.stop.store(true, std::sync::atomic::Ordering::Release);
    match thread {
        Some(thread) => thread
            .join()
            .map_err(|_| "the connection thread panicked".to_owned()),
        None => Ok(()),
    }
}
