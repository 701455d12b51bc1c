//! A registry entry: what the registry knows of one plugin, and the one home of its
//! lifecycle: every state transition and every wait on the platform happens here.
//!
//! The entry's [`Slot`] lives in a `tokio::sync::watch` channel. A change goes through
//! [`Entry::update`] (or `update_if`), which changes the slot under the channel's lock and wakes
//! every waiter; a wait is a future on that channel ([`Entry::wait_until`]), awaited by async
//! callers and blocked on by the registry's blocking ones (loads, reloads and unloads run on
//! blocking threads). One mechanism: there is no second condition variable to forget. The
//! transitions are in [`EntryState::can_become`].
//!
//! `hung` and `crashed` are never stored: they are how a running entry shows while every worker
//! of its instance is stuck in a call past its timeout, or while the child process of its
//! isolated instance is dead (the supervisor then replaces it, `running -> draining`).
//! Reloads and unloads are exclusive ([`Entry::exclusive_blocking`]): one at a time per entry.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::watch;

mod reads;

use super::{
    error::LoadFailure,
    instance::Instance,
    status::{EntryState, PlatformStatus, ReloadStats},
};
use crate::{
    config::{PlatformConfig, Senders},
    loader::UnloadReport,
    manifest::Manifest,
};

/// After a failed load, uses within this time get that error instead of another attempt.
pub const RETRY_FAILED_LOAD_AFTER: Duration = Duration::from_secs(1);

/// What the registry knows of a plugin.
pub struct Entry {
    manifest: Manifest,
    manifest_path: PathBuf,
    /// Its manifest's `enable_when` held at discovery.
    enabled_by_env: bool,
    /// Its `[platforms.<id>]` table; a config reload replaces it.
    platform: RwLock<Option<Arc<PlatformConfig>>>,
    /// The lifecycle; see the module docs.
    slot: watch::Sender<Slot>,
    /// Reload counts and the last outcome.
    reloads: Mutex<ReloadStats>,
}

/// The lifecycle of one entry. Invariant: `instance` is set exactly in `running` and
/// `draining` (the instance being replaced), and `stopping` holds none.
#[derive(Default)]
struct Slot {
    state: EntryState,
    /// A reload or unload owns the entry.
    exclusive: bool,
    /// The generation of the last successful load (0: never loaded).
    generation: u64,
    instance: Option<Arc<Instance>>,
    /// The last error, or a note on a running entry (the state a hung generation lost).
    error: Option<String>,
    /// The last load's failure, shared with the callers that waited on it.
    failure: Option<Arc<LoadFailure>>,
    last_unload: Option<UnloadReport>,
    /// When the last load failed; uses within [`RETRY_FAILED_LOAD_AFTER`] get its error.
    failed_at: Option<Instant>,
    /// Loads attempted, and the time they took (load + start), in seconds.
    loads: u64,
    load_seconds: f64,
    last_load_ms: Option<f64>,
    /// Of that, the library load (copy, dlopen, checks); the rest is `start`.
    last_open_ms: Option<f64>,
}

impl Slot {
    fn become_(&mut self, next: EntryState) {
        debug_assert!(
            self.state.can_become(next),
            "illegal transition {:?} -> {next:?}",
            self.state
        );
        if !self.state.can_become(next) {
            tracing::error!(from = ?self.state, to = ?next, "illegal platform state transition");
        }
        self.state = next;
    }
}

/// What a caller that wants the instance gets: the serving one, the failure of a load that
/// just failed, or the job of loading it.
pub(crate) enum Admission {
    Serving(Arc<Instance>),
    Failed(Arc<LoadFailure>),
    Load { generation: u64 },
}

/// The entry as a reload or unload found it once no transition was in progress.
pub(crate) struct Settled {
    /// The serving instance, if running.
    pub(crate) instance: Option<Arc<Instance>>,
    pub(crate) generation: u64,
}

/// Ownership of an entry by one reload or unload; released when dropped.
pub(crate) struct Exclusive<'a>(&'a Entry);

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.update(|slot| slot.exclusive = false);
    }
}

impl Entry {
    /// A registered entry; `failure` refuses it before any load (its manifest's API).
    pub(super) fn new(
        manifest: Manifest,
        manifest_path: PathBuf,
        enabled_by_env: bool,
        platform: Option<PlatformConfig>,
        failure: Option<LoadFailure>,
    ) -> Entry {
        let failure = failure.map(Arc::new);
        let slot = Slot {
            state: match failure {
                Some(_) => EntryState::Failed,
                None => EntryState::Registered,
            },
            error: failure.as_ref().map(ToString::to_string),
            failure,
            ..Slot::default()
        };
        Entry {
            manifest,
            manifest_path,
            enabled_by_env,
            platform: RwLock::new(platform.map(Arc::new)),
            slot: watch::channel(slot).0,
            reloads: Mutex::new(ReloadStats::default()),
        }
    }

    /// An entry for a plugin whose manifest could not be read: `invalid`, it never loads.
    pub(super) fn invalid(
        manifest: Manifest,
        manifest_path: PathBuf,
        error: crate::manifest::ManifestError,
    ) -> Entry {
        let entry = Entry::new(
            manifest,
            manifest_path,
            false,
            None,
            Some(LoadFailure::Manifest(error)),
        );
        entry
            .slot
            .send_modify(|slot| slot.state = EntryState::Invalid);
        entry
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest file.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The plugin folder.
    pub fn dir(&self) -> &Path {
        self.manifest_path.parent().unwrap_or(Path::new("."))
    }

    /// Whether its manifest's `enable_when` held at discovery.
    pub fn enabled_by_env(&self) -> bool {
        self.enabled_by_env
    }

    /// Whether the platform is configured (table or `enable_when`).
    pub fn configured(&self) -> bool {
        self.enabled_by_env || self.platform_config().is_some()
    }

    /// The platform's `[platforms.<id>]` table, if any.
    pub fn platform_config(&self) -> Option<Arc<PlatformConfig>> {
        self.platform
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the platform delivers a message from `user` (its `allowed_users`; by default
    /// no one for a plugin with inbound connections, everyone for one without).
    pub fn admits(&self, user: &str) -> bool {
        let inbound = self.manifest.inbound;
        match &*self.platform.read().unwrap_or_else(|e| e.into_inner()) {
            Some(table) => table.senders.admits(user, inbound),
            None => Senders::Unset.admits(user, inbound),
        }
    }

    /// Its table's allowlist (unset without a table).
    pub fn senders(&self) -> Senders {
        self.platform_config()
            .map_or(Senders::Unset, |t| t.senders.clone())
    }

    /// Replaces the platform's table (a config reload); the next start uses it.
    pub(crate) fn set_platform_config(&self, platform: Option<PlatformConfig>) {
        *self.platform.write().unwrap_or_else(|e| e.into_inner()) = platform.map(Arc::new);
    }

    // --- The one mechanism: change and wake, or wait. ---

    /// Changes the slot and wakes every waiter.
    fn update<R>(&self, change: impl FnOnce(&mut Slot) -> R) -> R {
        let mut out = None;
        self.slot.send_modify(|slot| out = Some(change(slot)));
        out.expect("send_modify runs the change")
    }

    /// Looks at the slot and maybe changes it: `decide` returns its answer and whether it
    /// changed the slot (only then are waiters woken).
    fn update_if<R>(&self, decide: impl FnOnce(&mut Slot) -> (R, bool)) -> R {
        let mut out = None;
        self.slot.send_if_modified(|slot| {
            let (answer, changed) = decide(slot);
            out = Some(answer);
            changed
        });
        out.expect("send_if_modified runs the decision")
    }

    /// Waits, without holding a thread, until `ready` holds for the slot.
    async fn wait_until(&self, mut ready: impl FnMut(&Slot) -> bool) {
        let mut changes = self.slot.subscribe();
        // The sender lives as long as `self`: the wait ends only by `ready`.
        let _ = changes.wait_for(|slot| ready(slot)).await;
    }

    /// [`Entry::wait_until`] for the registry's blocking threads.
    fn wait_until_blocking(&self, ready: impl FnMut(&Slot) -> bool) {
        futures_executor::block_on(self.wait_until(ready));
    }

    /// Waits until no load, swap or stop is in progress; the state then.
    pub(crate) fn settled_state_blocking(&self) -> EntryState {
        self.wait_until_blocking(|slot| slot.state.is_settled() && !slot.exclusive);
        self.slot.borrow().state
    }

    // --- Loads (first use). ---

    /// Waits while a load, swap or stop is in progress, then: the serving instance; the
    /// failure of a load that failed a moment ago or that this caller waited on (no load per
    /// call into a broken library); or the job of loading it (`-> loading`).
    pub(crate) fn admit_blocking(&self) -> Admission {
        let mut waited = false;
        loop {
            let admitted = self.update_if(|slot| match slot.state {
                EntryState::Invalid => (slot.failure.clone().map(Admission::Failed), false),
                EntryState::Running => (slot.instance.clone().map(Admission::Serving), false),
                EntryState::Failed
                    if slot.failure.is_some()
                        && (waited
                            || slot
                                .failed_at
                                .is_some_and(|at| at.elapsed() < RETRY_FAILED_LOAD_AFTER)) =>
                {
                    (slot.failure.clone().map(Admission::Failed), false)
                }
                state if state.is_settled() => {
                    slot.become_(EntryState::Loading);
                    let generation = slot.generation + 1;
                    (Some(Admission::Load { generation }), true)
                }
                _ => (None, false),
            });
            if let Some(admitted) = admitted {
                return admitted;
            }
            waited = true;
            self.wait_until_blocking(|slot| slot.state.is_settled());
        }
    }

    /// The library of a load is open (`loading -> starting`).
    pub(crate) fn opened(&self, took: Duration) {
        self.update(|slot| {
            slot.last_open_ms = Some(took.as_secs_f64() * 1e3);
            slot.become_(EntryState::Starting);
        });
    }

    /// A load ended (`-> running` or `-> failed`); wakes the callers waiting for it.
    pub(crate) fn load_finished(
        &self,
        generation: u64,
        took: Duration,
        result: Result<Arc<Instance>, LoadFailure>,
    ) -> Result<Arc<Instance>, Arc<LoadFailure>> {
        self.update(|slot| {
            slot.loads += 1;
            slot.load_seconds += took.as_secs_f64();
            slot.last_load_ms = Some(took.as_secs_f64() * 1e3);
            match result {
                Ok(instance) => {
                    slot.become_(EntryState::Running);
                    slot.generation = generation;
                    slot.error = None;
                    slot.failure = None;
                    slot.instance = Some(Arc::clone(&instance));
                    Ok(instance)
                }
                Err(failure) => {
                    let failure = Arc::new(failure);
                    slot.become_(EntryState::Failed);
                    slot.error = Some(failure.to_string());
                    slot.failure = Some(Arc::clone(&failure));
                    slot.failed_at = Some(Instant::now());
                    Err(failure)
                }
            }
        })
    }

    // --- Reloads and unloads. ---

    /// Takes the entry for one reload or unload, waiting for the one in progress.
    pub(crate) fn exclusive_blocking(&self) -> Exclusive<'_> {
        loop {
            let taken = self.update_if(|slot| {
                let free = !slot.exclusive;
                slot.exclusive = true;
                (free, free)
            });
            if taken {
                return Exclusive(self);
            }
            self.wait_until_blocking(|slot| !slot.exclusive);
        }
    }

    /// Waits until no load is in progress; the serving instance then, if any.
    pub(crate) fn settled_blocking(&self, _owner: &Exclusive<'_>) -> Settled {
        self.wait_until_blocking(|slot| slot.state.is_settled());
        let slot = self.slot.borrow();
        Settled {
            instance: (slot.state == EntryState::Running)
                .then(|| slot.instance.clone())
                .flatten(),
            generation: slot.generation,
        }
    }

    /// Closes the door for a reload (`running -> draining`): new calls wait for the swap.
    pub(crate) fn hold(&self, _owner: &Exclusive<'_>) {
        self.update(|slot| slot.become_(EntryState::Draining));
    }

    /// Opens the door on `instance` (`draining -> running`); `note` stays on the status.
    pub(crate) fn serve(
        &self,
        _owner: &Exclusive<'_>,
        instance: Arc<Instance>,
        generation: u64,
        note: Option<String>,
    ) {
        self.update(|slot| {
            slot.become_(EntryState::Running);
            slot.instance = Some(instance);
            slot.generation = generation;
            slot.error = note;
            slot.failure = None;
        });
    }

    /// Neither the new instance nor the old could start (`draining -> failed`).
    pub(crate) fn swap_failed(&self, _owner: &Exclusive<'_>, error: String) {
        self.update(|slot| {
            slot.become_(EntryState::Failed);
            slot.instance = None;
            slot.error = Some(error);
        });
    }

    /// Begins an unload (`running -> stopping`): the instance to stop, if one was running.
    pub(crate) fn begin_stop(&self, _owner: &Exclusive<'_>) -> Option<Arc<Instance>> {
        self.update_if(|slot| {
            if slot.state != EntryState::Running {
                return (None, false);
            }
            slot.become_(EntryState::Stopping);
            (slot.instance.take(), true)
        })
    }

    /// An unload ended (`stopping -> unloaded`, or `-> failed` with `error`).
    pub(crate) fn stopped(&self, _owner: &Exclusive<'_>, result: Result<UnloadReport, String>) {
        self.update(|slot| match result {
            Ok(report) => {
                slot.become_(EntryState::Unloaded);
                slot.last_unload = Some(report);
            }
            Err(error) => {
                slot.become_(EntryState::Failed);
                slot.error = Some(error);
            }
        });
    }

    /// Keeps the report of an old library's unload.
    pub(crate) fn set_last_unload(&self, report: UnloadReport) {
        self.update(|slot| slot.last_unload = Some(report));
    }
}
