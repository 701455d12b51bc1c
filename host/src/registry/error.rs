//! Why a platform could not be found, loaded, started or stopped. Each error keeps its source;
//! only the HTTP layer ([`crate::api`]) turns one into a status code and a client's message.

use std::{path::PathBuf, sync::Arc};

use hermes_plugin_api::abi::ABI_VERSION;

use crate::{
    loader::{CallError, LoadError, StopError},
    manifest::ManifestError,
    probe::ProbeError,
    quarantine::Quarantined,
};

/// Something discovery could not register. The other plugins register all the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryProblem {
    /// A manifest that could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Two manifests with one id; the first one found is kept.
    #[error("plugin id `{id}` is declared twice: {} and {}; keeping the first", first.display(), second.display())]
    DuplicateId {
        /// The id.
        id: String,
        /// The manifest kept.
        first: PathBuf,
        /// The manifest ignored.
        second: PathBuf,
    },
    /// A platform enabled from the environment whose `HERMES_<ID>_<KEY>` config is invalid.
    #[error("platform `{id}` (enabled from the environment): {error}")]
    EnvConfig {
        /// The platform.
        id: String,
        /// The variable at fault.
        error: crate::config::EnvConfigError,
    },
    /// A plugins folder that could not be read.
    #[error("{}: cannot read plugins folder: {message}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Why a platform could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No plugin has this id.
    #[error("no plugin with id `{0}` is installed")]
    Unknown(String),
    /// Loading or starting it failed. Callers that waited on one load share its failure.
    #[error("platform `{id}` failed to load: {cause}")]
    LoadFailed {
        /// The platform.
        id: String,
        /// Why.
        #[source]
        cause: Arc<LoadFailure>,
    },
    /// Its instance did not stop: a call or the plugin's `stop` did not return in time.
    #[error("platform `{id}` did not stop: {cause}")]
    StopFailed {
        /// The platform.
        id: String,
        /// Why.
        #[source]
        cause: StopError,
    },
}

/// Why a library could not be loaded, validated or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadFailure {
    /// The manifest declares another plugin API: refused before anything is opened.
    #[error("{}: field `plugin.api`: the plugin declares API {declared}, this host speaks {ABI_VERSION}; refused before loading", manifest.display())]
    ApiMismatch {
        /// The manifest.
        manifest: PathBuf,
        /// The API it declares.
        declared: u32,
    },
    /// The manifest could not be read again (a reload re-reads it).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest file is gone (a reload re-reads it).
    #[error("{}: the manifest is gone", .0.display())]
    ManifestGone(PathBuf),
    /// Variables the manifest's `required_env` names are unset or empty.
    #[error("{}: field `plugin.required_env`: {} unset or empty in the gateway's environment; set {} before starting it", manifest.display(), names.join(", "), if names.len() == 1 { "it" } else { "them" })]
    MissingEnv {
        /// The manifest.
        manifest: PathBuf,
        /// The variables.
        names: Vec<String>,
    },
    /// No library file where the manifest says.
    #[error("library {file} not found (looked in {}){}", looked_in(.looked), dash_hint(.file))]
    NotFound {
        /// The file name looked for.
        file: String,
        /// The folders looked in.
        looked: Vec<PathBuf>,
    },
    /// Something is where the library should be, but not a regular file.
    #[error("{} is {kind}, not a library file", path.display())]
    NotAFile {
        /// What is there.
        path: PathBuf,
        /// `a folder`, `a FIFO`, `a device`, `a socket`.
        kind: &'static str,
    },
    /// This process's shadow folder could not be claimed.
    #[error("shadow folder {}: {source}", dir.display())]
    ShadowDir {
        /// The shadow root.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The library did not pass the loader's checks.
    #[error(transparent)]
    Library(#[from] LoadError),
    /// The library, its manifest or a folder on their path could be changed by someone else,
    /// or the library lies outside the folders it may come from ([`crate::trust`]).
    #[error(transparent)]
    Untrusted(#[from] crate::trust::Untrusted),
    /// `trust = "lock"` and the library is not the one hermes.lock pins (the one line says
    /// both hashes and the command that accepts it), or `"signed"` and it is not signed by a
    /// trusted key.
    #[error("{0}")]
    Unpinned(String),
    /// The probe, which opens the library in a child process first, refused it.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The child of an isolated platform could not be started, or could not open the library.
    #[error(transparent)]
    Isolated(#[from] crate::isolate::ChildError),
    /// The process died before while loading or starting this very file.
    #[error("{0}")]
    Quarantined(Quarantined),
    /// A platform enabled from the environment whose `HERMES_<ID>_<KEY>` table is invalid: it
    /// is not started with the defaults instead (which would fail on some other, misleading key).
    #[error(
        "platform `{platform}` (enabled from the environment): {source}; fix the variable and restart"
    )]
    EnvConfig {
        /// The platform.
        platform: String,
        /// The variable at fault.
        #[source]
        source: crate::config::EnvConfigError,
    },
    /// The plugin refused its `[platforms.<id>]` table.
    #[error("[platforms.{platform}]: {source}")]
    Config {
        /// The platform.
        platform: String,
        /// The plugin's answer.
        #[source]
        source: CallError,
    },
    /// The plugin's `start` failed.
    #[error("[platforms.{platform}]: {source}")]
    Start {
        /// The platform.
        platform: String,
        /// The plugin's answer.
        #[source]
        source: CallError,
    },
}

/// Cargo writes `libmy_plugin.so` for a crate named `my-plugin`: a `-` in the name is a slip.
fn dash_hint(file: &str) -> String {
    let Some(name) = file
        .strip_prefix("lib")
        .and_then(|f| f.strip_suffix(".so"))
        .filter(|n| n.contains('-'))
    else {
        return String::new();
    };
    format!(
        "; cargo names the library with `_` where the crate name has `-`: set `library = \"{}\"` in plugin.toml",
        name.replace('-', "_")
    )
}

fn looked_in(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
