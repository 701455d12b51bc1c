//! What the registry says of `[platforms.<id>]` tables before anything runs with them: a table
//! for an id no plugin has (with the closest installed id), a table its plugin refuses
//! (`validate_config` on a scratch copy), a table the host refuses (idle unload of a plugin with
//! inbound connections).

use hermes_plugin_api::abi::ABI_VERSION;

use super::{LoadFailure, Registry, api_mismatch};
use crate::config::PlatformConfig;

impl Registry {
    /// Why a `[platforms.<id>]` table names no installed plugin, with the closest installed id
    /// when one is near (a misspelling), and the installed ones; `None` if `id` is installed.
    pub fn unknown_table(&self, id: &str) -> Option<String> {
        if self.is_registered(id) {
            return None;
        }
        let mut installed: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        installed.sort_unstable();
        let near = installed
            .iter()
            .map(|known| (edit_distance(id, known), *known))
            .filter(|(d, known)| *d <= 2.max(known.len() / 4))
            .min();
        let hint = near.map_or(String::new(), |(_, known)| {
            format!(" (did you mean `{known}`?)")
        });
        Some(format!(
            "[platforms.{id}]: no plugin with id `{id}` is installed{hint}; installed: {}",
            if installed.is_empty() {
                "none".to_owned()
            } else {
                installed.join(", ")
            }
        ))
    }

    /// Checks `table` as `id`'s new `[platforms.<id>]` with its plugin's `validate_config`: the
    /// library is loaded from a scratch copy for that and unloaded. Nothing else changes.
    pub fn validate_table(&self, id: &str, table: &PlatformConfig) -> Result<(), LoadFailure> {
        let Ok(entry) = self.entry(id) else {
            // Not installed: nothing to validate it with (a config reload warns about it).
            return Ok(());
        };
        if entry.manifest().api != ABI_VERSION {
            return Err(api_mismatch(entry.manifest(), entry.manifest_path()));
        }
        let path = self.resolve_library(entry)?;
        let opened = self.open_platform(entry, table, &path)?;
        let library = opened.library;
        let checked = library.validate_config(&self.plugin_json(entry, table), table.call_timeout);
        drop(opened.marker);
        let report = library.unload();
        if !report.clean() {
            tracing::warn!(platform = id, ?report, "a validation copy stayed resident");
        }
        checked.map_err(|source| LoadFailure::Config {
            platform: id.to_owned(),
            source,
        })
    }

    /// Why `table` cannot be `id`'s: `idle_unload_secs` on a plugin that holds inbound
    /// connections (manifest `inbound`), whose inbound an idle unload would stop for good.
    pub fn idle_unload_refusal(&self, id: &str, table: &PlatformConfig) -> Option<String> {
        let entry = self.entries.get(id)?;
        (entry.manifest().inbound && table.idle_unload.is_some()).then(|| {
            format!(
                "[platforms.{id}] idle_unload_secs: `{id}` holds inbound connections (its manifest says `inbound = true`), so unloading it when idle would stop its inbound messages until the next send; remove the key"
            )
        })
    }
}

/// Levenshtein distance between two short ids.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod edit_distance_tests {
    #[test]
    fn counts_edits() {
        assert_eq!(super::edit_distance("ircc", "irc"), 1);
        assert_eq!(super::edit_distance("loopbak", "loopback"), 1);
        assert_eq!(super::edit_distance("mqtt", "xmpp"), 4);
        assert_eq!(super::edit_distance("", "abc"), 3);
    }
}
