//! The platform table that `plugin list` and `status` print.

use crate::registry::PlatformStatus;

/// Writes one row per platform; `from`, when given, adds a FROM column (where `plugin list`
/// found each plugin).
pub(super) fn write_table(
    out: &mut impl std::io::Write,
    list: &[PlatformStatus],
    from: Option<&dyn Fn(&PlatformStatus) -> String>,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let mut row = vec![
                s.id.clone(),
                s.name.clone(),
                // The loaded library's version, and the manifest's beside it when they differ.
                if s.version == s.manifest_version {
                    s.version.clone()
                } else {
                    format!("{} (manifest {})", s.version, s.manifest_version)
                },
                s.api.to_string(),
                s.state.as_str().to_owned(),
                if s.configured { "yes" } else { "no" }.to_owned(),
            ];
            row.extend(from.map(|f| f(s)));
            row
        })
        .collect();
    let mut header = vec!["ID", "NAME", "VERSION", "API", "STATE", "CONFIGURED"];
    if from.is_some() {
        header.push("FROM");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if list.is_empty() {
        writeln!(out, "(no plugins installed)")?;
    }
    Ok(())
}
