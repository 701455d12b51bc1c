//! Crashes after the start: the report the fatal-signal handler ([`crate::loader::fatal`]) left
//! in `<state_dir>/crash.last` is logged at the next start and counted towards a streak kept in
//! `<state_dir>/crash.streak`; a library named by two crashes in a row, without a clean exit
//! between, is quarantined as a crashing load is.

use std::{fs, io, os::unix::fs::DirBuilderExt as _, path::PathBuf};

use super::{Quarantine, Quarantined};

impl Quarantine {
    /// The previous run died of a fatal signal whose report (`crash.last`, see
    /// [`crate::loader::fatal`]) is `report`: counts it towards a streak kept in
    /// `<state_dir>/crash.streak`; the same library (platform and content) named by two crashes
    /// in a row, with no clean exit between, is quarantined. The record, when it was.
    pub(crate) fn after_crash(&self, report: &str) -> io::Result<Option<Quarantined>> {
        let field = |key: &str| {
            report
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(platform), Some(hash)) = (field("platform="), field("content=")) else {
            // Not in a plugin's code: no streak to keep.
            let _ = fs::remove_file(self.streak_path());
            return Ok(None);
        };
        let library = report
            .split_once(" library=")
            .map(|(_, rest)| rest.split(" generation=").next().unwrap_or(rest).to_owned())
            .unwrap_or_default();
        let previous = fs::read_to_string(self.streak_path()).unwrap_or_default();
        let count = match previous.split_whitespace().collect::<Vec<_>>()[..] {
            [p, h, n] if p == platform && h == hash => n.parse::<u32>().unwrap_or(0) + 1,
            _ => 1,
        };
        fs::write(self.streak_path(), format!("{platform} {hash} {count}\n"))?;
        if count < 2 {
            return Ok(None);
        }
        let record = Quarantined {
            platform: platform.clone(),
            hash,
            library: PathBuf::from(library),
            at_ms: hermes_plugin_api::now_ms(),
            pid: std::process::id(),
            suspect: false,
            reason: Some(format!(
                "the gateway died of a fatal signal in its code {count} times in a row:"
            )),
        };
        let mut list = self.list()?;
        list.insert(platform, record.clone());
        self.write(&list)?;
        let _ = fs::remove_file(self.streak_path());
        Ok(Some(record))
    }

    /// At `serve`'s start: reports how the previous run died if a fatal signal ended it
    /// (counting it towards the quarantine streak), then installs the fatal-signal handler that
    /// writes this run's report.
    pub(crate) fn watch_for_fatal_signals(&self) {
        let file = self.state_dir.join("crash.last");
        if let Some(report) = crate::loader::fatal::take_last_crash(&file) {
            tracing::error!(%report, "the previous run of the gateway died of a fatal signal");
            match self.after_crash(&report) {
                Ok(Some(record)) => tracing::error!("{record}"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot keep the crash streak"),
            }
        }
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir);
        crate::loader::fatal::install(&file);
    }

    /// The gateway stopped cleanly: a crash streak ends.
    pub(crate) fn clean_exit(&self) {
        let _ = fs::remove_file(self.streak_path());
    }

    fn streak_path(&self) -> PathBuf {
        self.state_dir.join("crash.streak")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ContentHash;

    #[test]
    fn two_fatal_signals_in_a_row_in_the_same_library_quarantine_it() {
        let dir = tempfile::tempdir().unwrap();
        let quarantine = Quarantine::new(dir.path());
        let hash = ContentHash(9).to_string();
        let report = |content: &str| {
            format!(
                "hermes-host: fatal signal SIGSEGV at pc 0x1 in the code of platform=x content={content} library=/p/x.so generation=3"
            )
        };
        assert_eq!(quarantine.after_crash(&report(&hash)).unwrap(), None);
        // A clean exit between two crashes ends the streak.
        quarantine.clean_exit();
        assert_eq!(quarantine.after_crash(&report(&hash)).unwrap(), None);
        // Another library between: no streak either.
        assert_eq!(quarantine.after_crash(&report("other")).unwrap(), None);
        assert_eq!(quarantine.after_crash(&report(&hash)).unwrap(), None);
        let record = quarantine.after_crash(&report(&hash)).unwrap().unwrap();
        assert_eq!(record.library, PathBuf::from("/p/x.so"));
        assert_eq!(
            quarantine.check("x", ContentHash(9)).unwrap(),
            Some(record.clone())
        );
        assert!(
            record
                .to_string()
                .contains("fatal signal in its code 2 times in a row")
        );
        // Outside any plugin: nothing counted.
        assert_eq!(
            quarantine
                .after_crash(
                    "hermes-host: fatal signal SIGSEGV at pc 0x1 outside any plugin's code"
                )
                .unwrap(),
            None
        );
    }
}
