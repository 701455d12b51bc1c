//! Where an installed gateway finds its config, plugins and state, outside a checkout.
//!
//! - The config, without `--config`: `$HERMES_CONFIG` (which must exist), else `./hermes.toml`,
//!   else `$XDG_CONFIG_HOME/hermes/hermes.toml` (`~/.config/...`), else
//!   `/etc/hermes/hermes.toml`; none of them: the defaults, relative to the working folder.
//! - Plugins, in this order (the first plugin of an id wins): each folder of
//!   `$HERMES_PLUGIN_PATH` (colon-separated), the config's `[plugins] dirs`, then
//!   `$XDG_DATA_HOME/hermes/plugins` (`~/.local/share/...`), `/usr/local/lib/hermes/plugins`
//!   and `/usr/lib/hermes/plugins` (those three only when they exist). `plugin list` says
//!   which folder each plugin came from.
//! - State: `$STATE_DIRECTORY` (what systemd's `StateDirectory=` made), else the config's
//!   `state_dir` (default `.hermes` beside the config).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The config file's name in each folder searched.
pub const CONFIG_FILE: &str = "hermes.toml";

/// The system-wide config.
pub const SYSTEM_CONFIG: &str = "/etc/hermes/hermes.toml";

/// Where the system's packages put plugins, after the user's own.
pub const SYSTEM_PLUGIN_DIRS: [&str; 2] =
    ["/usr/local/lib/hermes/plugins", "/usr/lib/hermes/plugins"];

/// Why a plugin folder is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `$HERMES_PLUGIN_PATH`.
    Env,
    /// The config's `[plugins] dirs` (or its default, `plugins` beside it).
    Config,
    /// `$XDG_DATA_HOME/hermes/plugins`.
    User,
    /// `/usr/local/lib/hermes/plugins` or `/usr/lib/hermes/plugins`.
    System,
}

impl Origin {
    /// How `plugin list` names it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Env => "HERMES_PLUGIN_PATH",
            Origin::Config => "config",
            Origin::User => "user",
            Origin::System => "system",
        }
    }
}

/// One folder of the plugin search path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchDir {
    /// The folder.
    pub path: PathBuf,
    /// Why it is searched.
    pub origin: Origin,
}

/// The variables the search reads, so tests can pass their own.
pub trait Env {
    /// A variable's value, when set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// This process's environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

fn xdg(env: &dyn Env, var: &str, fallback: &str) -> Option<PathBuf> {
    env.var(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env.var("HOME").map(|home| Path::new(&home).join(fallback)))
}

/// The config to read without `--config`: `Ok(None)` means none exists (the defaults apply);
/// `Err` names a `$HERMES_CONFIG` that does not exist.
pub fn find_config(env: &dyn Env) -> Result<Option<PathBuf>, String> {
    if let Some(path) = env.var("HERMES_CONFIG") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(Some(path))
        } else {
            Err(format!(
                "{}: no such config file (named by $HERMES_CONFIG)",
                path.display()
            ))
        };
    }
    let candidates = [
        Some(PathBuf::from(CONFIG_FILE)),
        xdg(env, "XDG_CONFIG_HOME", ".config").map(|d| d.join("hermes").join(CONFIG_FILE)),
        Some(PathBuf::from(SYSTEM_CONFIG)),
    ];
    Ok(candidates.into_iter().flatten().find(|p| p.exists()))
}

/// The plugin search path: `$HERMES_PLUGIN_PATH`, then `config_dirs`, then the user's and the
/// system's folders that exist.
pub fn plugin_search(env: &dyn Env, config_dirs: &[PathBuf]) -> Vec<SearchDir> {
    let mut dirs: Vec<SearchDir> = env
        .var("HERMES_PLUGIN_PATH")
        .iter()
        .flat_map(|v| v.split(':'))
        .filter(|p| !p.is_empty())
        .map(|p| SearchDir {
            path: PathBuf::from(p),
            origin: Origin::Env,
        })
        .collect();
    dirs.extend(config_dirs.iter().map(|p| SearchDir {
        path: p.clone(),
        origin: Origin::Config,
    }));
    let user = xdg(env, "XDG_DATA_HOME", ".local/share").map(|d| d.join("hermes/plugins"));
    let standard = user.into_iter().map(|p| (p, Origin::User)).chain(
        SYSTEM_PLUGIN_DIRS
            .iter()
            .map(|p| (PathBuf::from(p), Origin::System)),
    );
    for (path, origin) in standard {
        if path.is_dir() && !dirs.iter().any(|d| d.path == path) {
            dirs.push(SearchDir { path, origin });
        }
    }
    dirs
}

/// `$STATE_DIRECTORY` (its first folder: systemd lists several when the unit names several).
pub fn service_state_dir(env: &dyn Env) -> Option<PathBuf> {
    env.var("STATE_DIRECTORY")
        .and_then(|v| v.split(':').next().map(PathBuf::from))
        .filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, String>);

    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    #[test]
    fn plugins_are_searched_in_order_and_say_why() {
        let home = tempfile::tempdir().unwrap();
        let user = home.path().join(".local/share/hermes/plugins");
        std::fs::create_dir_all(&user).unwrap();
        let env = Vars(HashMap::from([
            ("HERMES_PLUGIN_PATH", "/opt/a::/opt/b".to_owned()),
            ("HOME", home.path().display().to_string()),
        ]));
        let dirs = plugin_search(&env, &[PathBuf::from("/etc/hermes/plugins")]);
        let got: Vec<(&Path, Origin)> = dirs.iter().map(|d| (d.path.as_path(), d.origin)).collect();
        assert_eq!(
            got[..4],
            [
                (Path::new("/opt/a"), Origin::Env),
                (Path::new("/opt/b"), Origin::Env),
                (Path::new("/etc/hermes/plugins"), Origin::Config),
                (user.as_path(), Origin::User),
            ]
        );
        // A user folder that does not exist is not searched.
        let env = Vars(HashMap::from([("HOME", "/nonexistent".to_owned())]));
        assert!(
            plugin_search(&env, &[])
                .iter()
                .all(|d| d.origin == Origin::System)
        );
    }

    #[test]
    fn the_config_comes_from_hermes_config_then_the_xdg_folder() {
        let home = tempfile::tempdir().unwrap();
        let xdg = home.path().join(".config/hermes/hermes.toml");
        std::fs::create_dir_all(xdg.parent().unwrap()).unwrap();
        std::fs::write(&xdg, "").unwrap();
        let env = Vars(HashMap::from([("HOME", home.path().display().to_string())]));
        // (The tests run in the crate's folder, which has no hermes.toml.)
        assert_eq!(find_config(&env).unwrap(), Some(xdg.clone()));
        let env = Vars(HashMap::from([(
            "HERMES_CONFIG",
            "/nonexistent.toml".to_owned(),
        )]));
        assert!(find_config(&env).unwrap_err().contains("$HERMES_CONFIG"));
        let state = Vars(HashMap::from([(
            "STATE_DIRECTORY",
            "/var/lib/hermes:/var/lib/other".to_owned(),
        )]));
        assert_eq!(
            service_state_dir(&state),
            Some(PathBuf::from("/var/lib/hermes"))
        );
    }
}
