//! hermes-host's integration tests: one test binary, a module per area, real `dlopen` of real
//! libraries and real files.
//!
//! The plugin libraries are built once per run before the tests (`make test` runs
//! `cargo build --workspace` first); the helpers refuse to guess when one is missing.
//! Run under cargo-nextest, every test is its own process, so the process-wide counts some
//! tests take (mapped files, fds, threads) see only that test.

// Helpers: temp dirs, installed plugins, a recording event sink, process counters.
mod util;
// Real peers: ngircd and mosquitto on free loopback ports, a raw IRC client.
mod peers;

// Registry: discovery from manifests, lazy loads, one load for concurrent first users.
mod registry;
// Loader: load/call/unload, leak-free cycles, refusals, panics, plugin threads, timeouts.
mod loader;
// Plugins built for earlier plugin API levels, from their frozen sources, in this host.
mod compat;
// The `hermes-host plugin` commands run as a user runs them.
mod cli;
// `serve`: the API router called directly, and the real binary end to end.
mod serve;
// Edits, deletes, reactions, replies, threads, attachments; capabilities; long texts split.
mod kinds;
// Idempotency keys: repeats answered from the store, across kill -9.
mod idempotency;
// Strict modes: what someone else could change is not loaded.
mod trust;
// Queued sends: the outbox, rate budgets, retries, dead letters.
mod delivery;
// Reload as a transaction, in process and through the CLI; the hot-reload watcher.
mod reload;
// The IRC adapter against ngircd.
mod irc;
// IRC through the gateway: long texts in parts, other kinds as text.
mod irc_kinds;
// The MQTT adapter against mosquitto.
mod mqtt;
// The webhook adapter against an HTTP server in the test.
mod webhook;
// The webhook adapter's JSON targets and listener carry every kind.
mod webhook_kinds;
// IRC and MQTT bridged by routes through `serve`.
mod bridge;
// The lifecycle under load and hangs: queue deadlines, timeouts, the supervisor, fencing.
mod lifecycle;
// Faults: kill -9, a full disk, a stuck journal, the control socket's path, start-up order.
mod faults;
// Libraries that crash their loader: the probe, and quarantine after a crash.
mod crashes;
// The status page, in a real headless Chromium.
mod browser;
// The README's quick-start commands, run against the example config.
mod readme;
// `isolation = "process"`: faults contained in the child, restarts, state, environment.
mod isolation;
// The sandbox of isolated platforms: Landlock, seccomp, what status says.
mod sandbox;
// The XMPP adapter against Prosody.
mod xmpp;
// XMPP's corrections, retractions, reactions, replies and threads, both ways.
mod xmpp_kinds;
// The Matrix adapter against Synapse.
mod matrix;
// Matrix's edits, reactions, replies, threads and redactions, both ways.
mod matrix_kinds;
// Abusive clients: idle keep-alive and slow-body lock-outs, other hosts and origins.
mod abuse;
// Hostile stand-in peers: deep, endless and huge input from a server.
mod hostile;
// Allowlists: whose inbound messages a platform delivers.
mod allowlist;
// An installed binary outside a checkout: the config, plugin and state search paths.
mod paths;
// The Debian package: dpkg -i, the installed binary serving, dpkg --purge (root; run alone).
mod package;
// Operations as docs/operations.md describes them: backup and restore of the store.
mod operations;
