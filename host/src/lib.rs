//! hermes-host: a messaging gateway whose platform adapters are plugins loaded at run time.
//!
//! The pieces, in the order a message meets them:
//! - [`config`] reads `hermes.toml`; [`manifest`] reads each plugin's `plugin.toml`.
//! - [`registry`] knows every installed plugin from its manifest and loads one only when it
//!   is used, through [`loader`], the one module with `unsafe` code. Every library is first
//!   opened in a child process by the [`probe`], and a library that took the process down
//!   while loading is refused by the [`quarantine`] until it changes.
//! - [`check`] runs a plugin through every load-time check without keeping it.
//! - [`gateway`] moves messages: sends, inbound dispatch to SSE ([`events`]), [`journal`]
//!   and the routes that [`routing`] plans, counted in [`metrics`]; [`serve`] runs it behind the public [`api`] and the [`control`]
//!   socket, each served by [`http`] with a connection limit and a header-read timeout. [`message`] holds the host's own message types.
//! - [`delivery`] queues sends (`Prefer: respond-async`) in the [`store`] and delivers them in
//!   order per chat within each platform's rate budget, with retries and dead letters.
//! - [`reload`] swaps a running plugin for a rebuilt one as a transaction; [`hotreload`] does
//!   it when the library file changes.
//! - [`gateway::reconfigure`] applies a changed hermes.toml (SIGHUP, `reload-config`) as a
//!   whole; [`supervise`] replaces hung instances and restarts crashed children.
//! - [`cli`] is the `hermes-host` command.
//!
//! Measured figures for each piece are in BENCHMARKS.md; the README and docs/ say how to run it.

pub mod api;
pub mod capabilities;
pub(crate) mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub(crate) mod events;
pub mod gateway;
pub(crate) mod hotreload;
pub(crate) mod http;
pub(crate) mod isolate;
pub(crate) mod journal;
#[allow(unsafe_code)]
pub mod loader;
pub(crate) mod manifest;
pub mod message;
pub(crate) mod metrics;
pub mod probe;
pub(crate) mod quarantine;
pub mod registry;
pub use registry::reload;
pub(crate) mod routing;
pub mod sandbox;
pub(crate) mod serve;
pub(crate) mod service;
pub mod store;
pub(crate) mod supervise;
mod toml_error;
pub mod trust;
