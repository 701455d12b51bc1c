//! Whose inbound messages a platform delivers: `allowed_users` and `allow_all_users` in
//! `[platforms.<id>]`, or the environment's `<ID>_ALLOWED_USERS` and `<ID>_ALLOW_ALL_USERS`.
//!
//! A message from a sender the platform does not admit is dropped before the journal, the SSE
//! stream and the routes see it, and counted (`hermes_inbound_refused_total`). The default,
//! when neither key is set, follows the plugin: one with inbound connections (manifest
//! `inbound = true`: IRC, XMPP, Matrix, MQTT, webhook) admits no one, since anyone on the
//! platform could otherwise command what listens behind the gateway; one without (loopback)
//! only ever delivers answers to the gateway's own sends, and admits them. The gateway warns
//! at start about every platform that admits no one by default and every one open to everyone.

use std::collections::BTreeSet;

/// Whose messages a platform delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Senders {
    /// Neither key: everyone for a plugin without inbound connections, no one for one with.
    #[default]
    Unset,
    /// `allow_all_users = true`.
    Everyone,
    /// `allowed_users`: these ids, as the platform gives them (the `user` of an SSE event).
    Only(BTreeSet<String>),
}

impl Senders {
    /// Whether `user`'s message is delivered; `inbound_plugin` is the manifest's `inbound`.
    pub fn admits(&self, user: &str, inbound_plugin: bool) -> bool {
        match self {
            Senders::Unset => !inbound_plugin,
            Senders::Everyone => true,
            Senders::Only(users) => users.contains(user),
        }
    }

    /// Takes `allowed_users` and `allow_all_users` out of a platform's table; errors name the key.
    pub(super) fn from_table(table: &mut toml::Table) -> Result<Senders, (&'static str, String)> {
        let all = match table.remove("allow_all_users") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(toml::Value::String(s)) => truthy(&s).ok_or((
                "allow_all_users",
                format!("expected true or false, not {s:?}"),
            ))?,
            Some(_) => return Err(("allow_all_users", "expected true or false".to_owned())),
        };
        let users = match table.remove("allowed_users") {
            None => None,
            Some(toml::Value::String(list)) => Some(split_list(&list)),
            Some(toml::Value::Array(items)) => Some(
                items
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                        _ => Err((
                            "allowed_users",
                            "expected a list of non-empty user ids".to_owned(),
                        )),
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?,
            ),
            Some(_) => {
                return Err((
                    "allowed_users",
                    "expected a list of user ids (or one comma-separated string)".to_owned(),
                ));
            }
        };
        match (all, users) {
            (true, Some(users)) if !users.is_empty() => Err((
                "allow_all_users",
                "contradicts allowed_users: keep one of the two".to_owned(),
            )),
            (true, _) => Ok(Senders::Everyone),
            (false, Some(users)) => Ok(Senders::Only(users)),
            (false, None) => Ok(Senders::Unset),
        }
    }

    /// The environment's allowlist for `id`, read when its table sets neither key:
    /// `<ID>_ALLOWED_USERS` (comma-separated) or `<ID>_ALLOW_ALL_USERS` (`true`, `1`, `yes`).
    pub fn from_env(id: &str) -> Result<Senders, super::EnvConfigError> {
        let (users_var, all_var) = env_names(id);
        let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let all = match get(&all_var) {
            None => false,
            Some(v) => truthy(&v).ok_or_else(|| super::EnvConfigError {
                var: all_var.clone(),
                message: format!("expected true or false, not {v:?}"),
            })?,
        };
        match (all, get(&users_var)) {
            (true, Some(_)) => Err(super::EnvConfigError {
                var: all_var,
                message: format!("contradicts {users_var}: set one of the two"),
            }),
            (true, None) => Ok(Senders::Everyone),
            (false, Some(list)) => Ok(Senders::Only(split_list(&list))),
            (false, None) => Ok(Senders::Unset),
        }
    }

    /// The start-up warning for configured platform `id`, if it deserves one: open to everyone,
    /// or (a plugin with inbound connections and neither key) closed to everyone.
    pub fn warning(&self, id: &str, inbound_plugin: bool) -> Option<String> {
        let (users, all) = env_names(id);
        match self {
            Senders::Everyone => Some(format!(
                "platform `{id}` delivers messages from everyone on it (allow_all_users): anyone there can reach the SSE stream, the routes and whatever listens behind them"
            )),
            Senders::Unset if inbound_plugin => Some(format!(
                "platform `{id}` admits no sender yet: its inbound messages are dropped until [platforms.{id}] sets allowed_users = [...] (or allow_all_users = true), or the environment sets {users} (or {all}=true)"
            )),
            _ => None,
        }
    }

    /// How status and the start-up warning describe it.
    pub fn describe(&self, inbound_plugin: bool) -> String {
        match self {
            Senders::Unset if inbound_plugin => {
                "no one (set allowed_users or allow_all_users)".to_owned()
            }
            Senders::Unset => "everyone (answers to the gateway's sends)".to_owned(),
            Senders::Everyone => "everyone (allow_all_users)".to_owned(),
            Senders::Only(users) => format!("{} allowed user(s)", users.len()),
        }
    }
}

/// `<ID>_ALLOWED_USERS` and `<ID>_ALLOW_ALL_USERS`: the id upper-cased, `-` as `_`.
fn env_names(id: &str) -> (String, String) {
    let id = id.to_ascii_uppercase().replace('-', "_");
    (
        format!("{id}_ALLOWED_USERS"),
        format!("{id}_ALLOW_ALL_USERS"),
    )
}

fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn split_list(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Senders, (&'static str, String)> {
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let senders = Senders::from_table(&mut table);
        assert!(!table.contains_key("allowed_users") && !table.contains_key("allow_all_users"));
        senders
    }

    #[test]
    fn the_keys_and_the_defaults() {
        let alice = table("allowed_users = [\"alice\", \" bob \"]").unwrap();
        assert!(alice.admits("alice", true) && alice.admits("bob", true));
        assert!(!alice.admits("mallory", true) && !alice.admits("mallory", false));
        assert_eq!(table("allowed_users = \"a, b,\"").unwrap(), {
            Senders::Only(["a".to_owned(), "b".to_owned()].into())
        });
        let all = table("allow_all_users = true").unwrap();
        assert!(all.admits("anyone", true));
        let unset = table("").unwrap();
        assert!(!unset.admits("anyone", true), "closed for inbound plugins");
        assert!(unset.admits("anyone", false), "open for answers to sends");
        assert!(!table("allowed_users = []").unwrap().admits("x", false));
        for (text, key) in [
            (
                "allow_all_users = true\nallowed_users = [\"a\"]",
                "allow_all_users",
            ),
            ("allow_all_users = \"maybe\"", "allow_all_users"),
            ("allowed_users = [\"\"]", "allowed_users"),
            ("allowed_users = 3", "allowed_users"),
        ] {
            assert_eq!(table(text).unwrap_err().0, key, "{text}");
        }
    }
}
