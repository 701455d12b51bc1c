//! What a sandboxed child may touch: the manifest's `[sandbox]` table (what the plugin needs),
//! the operator's `[platforms.<id>.grants]` (the same keys, for what only the deployment
//! knows: a server on another port, a CA file elsewhere), and what every child gets.
//!
//! ```toml
//! [sandbox]
//! read = ["/opt/certs"]            # absolute paths it may read (a folder: all beneath)
//! write = []                       # absolute paths it may read and write
//! connect_ports = [6667, 6697]     # TCP ports it may connect to
//! bind_ports = []                  # TCP ports it may listen on
//! connect_keys = ["server"]        # config keys holding an address (host:port or URL):
//! bind_keys = ["listen"]           #   their port is granted; `a.b` walks tables and arrays
//! write_keys = ["store_path"]      # config keys holding a file: its folder is writable
//! ```
//!
//! The values of the manifest's `path_keys` are readable. Every child reads the system's
//! libraries, certificates and name-service files ([`SYSTEM_READ`]), its library and its
//! plugin folder, connects to port 53 (DNS over TCP), and writes its data folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Mode, Policy};

/// What every sandboxed child reads: shared libraries, certificates, name service, time zones.
pub const SYSTEM_READ: [&str; 17] = [
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/dev/urandom",
];

/// Files every sandboxed child reads and writes: the null device, its own `/proc` folder.
const SYSTEM_WRITE: [&str; 2] = ["/dev/null", "/proc/self"];

/// `[sandbox]` of a manifest, or `[platforms.<id>.grants]` of the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Paths it may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<PathBuf>,
    /// Paths it may read and write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<PathBuf>,
    /// TCP ports it may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_ports: Vec<u16>,
    /// TCP ports it may bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_ports: Vec<u16>,
    /// Config keys whose addresses' ports it may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connect_keys: Vec<String>,
    /// Config keys whose addresses' ports it may bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_keys: Vec<String>,
    /// Config keys naming a file whose folder it may read and write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_keys: Vec<String>,
}

impl Grants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        *self == Grants::default()
    }

    /// Relative paths are resolved against `base` (the config's folder); a manifest's must be
    /// absolute, which [`Grants::check_absolute`] enforces.
    pub fn resolve(mut self, base: &Path) -> Grants {
        for path in self.read.iter_mut().chain(self.write.iter_mut()) {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self
    }

    /// A manifest's paths: each absolute (a manifest knows nothing of where it is installed).
    /// `Err` names the key.
    pub fn check_absolute(&self) -> Result<(), (&'static str, String)> {
        for (key, paths) in [("read", &self.read), ("write", &self.write)] {
            if let Some(p) = paths.iter().find(|p| p.is_relative()) {
                return Err((
                    key,
                    format!(
                        "{} is relative; a manifest's paths are absolute",
                        p.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What one platform's child needs besides the grants: where things are.
pub struct Place<'a> {
    /// The library the child opens.
    pub library: &'a Path,
    /// The plugin's folder (its manifest's).
    pub plugin_dir: &'a Path,
    /// `<state_dir>/data/<id>/`, if there is a state dir.
    pub data_dir: Option<&'a Path>,
    /// The plugin's config as it receives it (`path_keys` resolved).
    pub config: &'a Value,
    /// The manifest's `path_keys`.
    pub path_keys: &'a [String],
}

/// The policy for a child: the system's share, `place`, the manifest's and the operator's
/// grants, and what the config's keys name.
pub fn policy(mode: Mode, place: &Place<'_>, manifest: &Grants, operator: &Grants) -> Policy {
    let mut policy = Policy {
        mode,
        read: SYSTEM_READ.iter().map(PathBuf::from).collect(),
        write: SYSTEM_WRITE.iter().map(PathBuf::from).collect(),
        connect_ports: vec![53],
        bind_ports: Vec::new(),
    };
    policy.read.push(place.library.to_owned());
    policy.read.push(place.plugin_dir.to_owned());
    policy.write.extend(place.data_dir.map(Path::to_owned));
    let strings = |key: &str| -> Vec<String> {
        values_at(place.config, key)
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    };
    for key in place.path_keys {
        policy
            .read
            .extend(strings(key).into_iter().map(PathBuf::from));
    }
    for grants in [manifest, operator] {
        policy.read.extend(grants.read.iter().cloned());
        policy.write.extend(grants.write.iter().cloned());
        policy.connect_ports.extend(&grants.connect_ports);
        policy.bind_ports.extend(&grants.bind_ports);
        for key in &grants.connect_keys {
            policy
                .connect_ports
                .extend(strings(key).iter().filter_map(|s| port_of(s)));
        }
        for key in &grants.bind_keys {
            policy
                .bind_ports
                .extend(strings(key).iter().filter_map(|s| port_of(s)));
        }
        for key in &grants.write_keys {
            policy.write.extend(
                strings(key)
                    .iter()
                    .filter_map(|s| Path::new(s).parent().map(Path::to_owned)),
            );
        }
    }
    for list in [&mut policy.connect_ports, &mut policy.bind_ports] {
        list.sort_unstable();
        list.dedup();
    }
    policy
}

/// The values under a dotted key: `targets.url` is every target's `url`.
fn values_at<'a>(value: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut here = vec![value];
    for part in key.split('.') {
        here = here
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(items) => items.iter().filter_map(|i| i.get(part)).collect(),
                other => other.get(part).into_iter().collect::<Vec<_>>(),
            })
            .collect();
    }
    here.into_iter()
        .flat_map(|v| match v {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        })
        .collect()
}

/// The TCP port of an address: `host:port`, `[v6]:port`, a bare port, or a URL (its port, else
/// its scheme's: http/ws 80, https/wss 443, mqtt 1883, mqtts 8883).
pub fn port_of(address: &str) -> Option<u16> {
    let address = address.trim();
    if let Ok(port) = address.parse::<u16>() {
        return Some(port);
    }
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, address),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let explicit = match host_port.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(':') && (!host.contains(':') || host.ends_with(']')) =>
        {
            port.parse::<u16>().ok()
        }
        _ => None,
    };
    explicit.or_else(|| match scheme.as_deref()? {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "mqtt" | "tcp" => Some(1883),
        "mqtts" | "ssl" => Some(8883),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_addresses_and_urls() {
        for (address, port) in [
            ("127.0.0.1:6667", Some(6667)),
            ("irc.example.org:6697", Some(6697)),
            ("[::1]:5222", Some(5222)),
            ("8090", Some(8090)),
            ("https://matrix.example.org", Some(443)),
            ("http://127.0.0.1:8008/_matrix", Some(8008)),
            ("http://user:pw@host:81/x", Some(81)),
            ("mqtt://broker", Some(1883)),
            ("example.org", None),
            ("gopher://example.org", None),
            ("::1", None),
        ] {
            assert_eq!(port_of(address), port, "{address}");
        }
    }

    #[test]
    fn keys_walk_tables_and_arrays() {
        let config = serde_json::json!({
            "server": "127.0.0.1:6667",
            "listen": "127.0.0.1:8090",
            "store_path": "/var/lib/x/store.json",
            "tls_ca_file": "/etc/private/ca.pem",
            "targets": [{"url": "http://127.0.0.1:9000/a"}, {"url": "https://hooks.example"}],
        });
        let manifest = Grants {
            connect_ports: vec![6697],
            connect_keys: vec!["server".into(), "targets.url".into()],
            bind_keys: vec!["listen".into()],
            write_keys: vec!["store_path".into()],
            ..Grants::default()
        };
        let operator = Grants {
            read: vec!["certs".into()],
            ..Grants::default()
        }
        .resolve(Path::new("/etc/hermes"));
        let keys = ["tls_ca_file".to_owned()];
        let place = Place {
            library: Path::new("/p/irc/libhermes_irc.so"),
            plugin_dir: Path::new("/p/irc"),
            data_dir: Some(Path::new("/state/data/irc")),
            config: &config,
            path_keys: &keys,
        };
        let policy = policy(Mode::Strict, &place, &manifest, &operator);
        assert_eq!(policy.connect_ports, [53, 443, 6667, 6697, 9000]);
        assert_eq!(policy.bind_ports, [8090]);
        for read in [
            "/p/irc/libhermes_irc.so",
            "/p/irc",
            "/etc/private/ca.pem",
            "/etc/hermes/certs",
        ] {
            assert!(policy.read.contains(&PathBuf::from(read)), "{read}");
        }
        for write in ["/state/data/irc", "/var/lib/x", "/dev/null"] {
            assert!(policy.write.contains(&PathBuf::from(write)), "{write}");
        }
        assert!(!policy.read.iter().any(|p| p.starts_with("/state")));
    }

    #[test]
    fn a_manifest_path_must_be_absolute() {
        let grants = Grants {
            write: vec!["data".into()],
            ..Grants::default()
        };
        assert_eq!(grants.check_absolute().unwrap_err().0, "write");
    }
}
