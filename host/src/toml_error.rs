//! TOML errors rendered for people: where in the file, which key, what is wrong. Shared by
//! [`crate::config`] and [`crate::manifest`], so neither has to import the other for it.

/// Renders a TOML error as `line L, column C: key `a.b`: message`.
pub(crate) fn describe(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    // The key is the `name =` on the error's line, inside the last `[table]` above it.
    let key = before[line_start..]
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'));
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match (table, key) {
        (Some(table), Some(key)) if !key.is_empty() => {
            format!("line {line}, column {column}: key `{table}.{key}`: {message}")
        }
        (None, Some(key)) if !key.is_empty() => {
            format!("line {line}, column {column}: key `{key}`: {message}")
        }
        _ => format!("line {line}, column {column}: {message}"),
    }
}
