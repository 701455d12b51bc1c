//! Process isolation (`[platforms.<id>] isolation = "process"`): the same cdylib, unchanged,
//! runs in a supervised child process (`hermes-host __isolate`) that loads it with the host's
//! own loader. The gateway never maps the library; a crash of the plugin ends the child alone.
//!
//! - [`wire`]: the framed protocol (serde + postcard in tokio-util length-delimited frames).
//! - [`child`]: the child's side.
//! - [`remote`]: the gateway's side, [`RemoteLibrary`] and [`RemoteInstance`], which mirror
//!   the loader's `Library` and `Instance` so the registry's transactions run on either.

pub(crate) mod child;
mod conn;
pub(crate) mod remote;
pub(crate) mod wire;

pub(crate) use conn::Spawn;
pub(crate) use remote::{ChildError, RemoteInstance, RemoteLibrary};
